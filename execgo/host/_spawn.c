/*
 * execgo.host._spawn: start one workload through vfork(), as another uid/gid.
 *
 * Why: the root supervisor starts every workload as an unprivileged uid/gid,
 * but CPython's _posixsubprocess only takes its vfork() path when no
 * credential change is asked for: Popen(user=, group=, extra_groups=) fork()s,
 * copying the page tables of the whole supervisor, a cost that grows with its
 * memory.  The reason: glibc's set*id()/setgroups() give POSIX
 * per-process semantics by signalling every thread (SIGSETXID) through the
 * library's thread list, which must not run in a child that borrows the
 * parent's memory.  The kernel calls only change the calling thread, which in
 * the child is the whole process: the child makes them with syscall().
 *
 * How: spawn() validates the arguments and builds every C array in the
 * parent, blocks all signals, vfork()s and restores the mask.  The child
 * (child_exec, never returning) only makes async-signal-safe calls: stdio
 * onto 0/1/2, close every fd >= 3 but keep_fd, setsid, chdir (still as root,
 * so a directory the uid cannot traverse works), umask, rlimits,
 * setgroups(0), setresgid, setresuid, a check of the result (ids, no groups,
 * no effective or permitted capabilities), PR_SET_NO_NEW_PRIVS, every signal
 * to SIG_DFL, an empty mask, execve over the candidate paths.  A failing step
 * stores (step, errno) in a volatile struct in the parent's memory (vfork
 * shares it) and _exit(127)s; the parent reaps the child and raises OSError.
 *
 * Into a cgroup: given the fd of a cgroup v2 directory, the child is made by
 * clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP) instead, so it is born
 * in that group.  Moving the supervisor into the group and back around a
 * plain vfork() instead takes the kernel's cgroup_threadgroup_rwsem for
 * writing twice, each time waiting for an RCU grace period, which under load
 * costs from a tenth of a millisecond to several.  A clone with CLONE_VM
 * needs a stack of its own for the child and must not return into C code in
 * the child: clone_into() is the syscall in a few lines of assembly (x86-64
 * only; elsewhere clone_into_supported() is false and the caller moves).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <linux/capability.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifdef SYS_setresuid32
#error "32-bit ABI: the plain set*id syscalls take 16-bit ids here"
#endif
_Static_assert(sizeof(rlim_t) == 8, "prlimit64 takes 64-bit limits");

/* The failing step; a number, not a pointer to its name: GCC folds to false
 * a comparison with the address of a string stored only by a noreturn
 * function (child_exec), since the caller "cannot" see that store. */
enum step {
    STEP_OK, STEP_DUP, STEP_DUP2, STEP_KEEP_FD, STEP_SETSID,
    STEP_CHDIR, STEP_RLIMIT, STEP_SETGROUPS, STEP_SETRESGID, STEP_SETRESUID,
    STEP_VERIFY, STEP_NO_NEW_PRIVS, STEP_SIGMASK, STEP_EXEC,
};
static const char *const step_names[] = {
    "", "dup", "dup2", "fcntl(keep_fd)", "setsid", "chdir",
    "setrlimit", "setgroups", "setresgid", "setresuid", "verify credentials",
    "prctl(PR_SET_NO_NEW_PRIVS)", "sigprocmask", "execve",
};

/* Written by the child only; read by the parent once the child has exec'd
 * or exited (vfork suspends the parent until then). */
struct failure { int step; int err; };

struct limit { int resource; struct rlimit value; };

/* Everything the child needs, ready-made: it must not allocate. */
struct plan {
    char **executables, **argv, **envp;
    const char *cwd;
    int stdio[3], keep_fd, umask;     /* keep_fd, umask: -1 for none */
    long long uid, gid;               /* -1: unchanged */
    struct limit *limits;
    Py_ssize_t n_limits;
};

/* Close fds lo..hi.  Without close_range (ENOSYS before Linux 5.9, or EPERM
 * from an old container seccomp profile) loop up to the soft RLIMIT_NOFILE:
 * a descriptor above a since-lowered limit would survive, as in CPython. */
static void
close_fds(unsigned int lo, unsigned int hi)
{
    struct rlimit rl;
    unsigned int fd, top = 1U << 20;

    if (syscall(SYS_close_range, lo, hi, 0) == 0)
        return;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < top)
        top = (unsigned int)rl.rlim_cur;
    for (fd = lo; fd < top && fd <= hi; fd++)
        (void)close((int)fd);
}

/* The ids the kernel reports are the planned ones, there are no groups and,
 * for a non-zero uid, no effective or permitted capabilities (the kernel
 * cleared them on setresuid; the ambient set is a subset of both). */
static int
credentials_ok(const struct plan *p)
{
    uid_t u[3];
    gid_t g[3];
    struct __user_cap_header_struct head = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[_LINUX_CAPABILITY_U32S_3];
    int i;

    if (syscall(SYS_getresuid, &u[0], &u[1], &u[2]) != 0
        || syscall(SYS_getresgid, &g[0], &g[1], &g[2]) != 0
        || syscall(SYS_getgroups, 0, NULL) != 0
        || (p->uid > 0 && syscall(SYS_capget, &head, caps) != 0))
        return 0;
    for (i = 0; i < 3; i++)
        if (u[i] != (uid_t)p->uid || (p->gid >= 0 && g[i] != (gid_t)p->gid))
            return 0;
    for (i = 0; p->uid > 0 && i < _LINUX_CAPABILITY_U32S_3; i++)
        if (caps[i].effective || caps[i].permitted)
            return 0;
    return 1;
}

#define FAIL(s) do { f->err = errno; f->step = (s); _exit(127); } while (0)

/* The vfork child: async-signal-safe calls and raw syscalls only. */
static void __attribute__((noinline, noreturn))
child_exec(const struct plan *p, volatile struct failure *f)
{
    static const unsigned long dfl[8];   /* >= any kernel struct sigaction */
    sigset_t none;
    int fds[3], i, err = ENOENT, first = 0;

    /* A source already at 0..2 could be overwritten by an earlier dup2()
     * (a known CPython pitfall): copy those above 2 first.  Then every dup2() is
     * between different fds, which clears FD_CLOEXEC on 0, 1 and 2. */
    for (i = 0; i < 3; i++)
        if ((fds[i] = p->stdio[i]) < 3
            && (fds[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 3)) < 0)
            FAIL(STEP_DUP);
    for (i = 0; i < 3; i++)
        if (dup2(fds[i], i) < 0)
            FAIL(STEP_DUP2);
    if (p->keep_fd < 0)
        close_fds(3, ~0U);
    else {
        if (p->keep_fd > 3)
            close_fds(3, (unsigned int)p->keep_fd - 1);
        close_fds((unsigned int)p->keep_fd + 1, ~0U);
        if (fcntl(p->keep_fd, F_SETFD, 0) < 0)
            FAIL(STEP_KEEP_FD);
    }
    if (setsid() < 0)
        FAIL(STEP_SETSID);
    if (chdir(p->cwd) < 0)
        FAIL(STEP_CHDIR);
    if (p->umask >= 0)
        (void)umask((mode_t)p->umask);
    /* Before the uid change: raising a hard limit needs privilege.  The raw
     * call, as some libcs (musl) broadcast setrlimit() to all threads. */
    for (i = 0; i < p->n_limits; i++)
        if (syscall(SYS_prlimit64, 0, p->limits[i].resource, &p->limits[i].value, NULL) < 0)
            FAIL(STEP_RLIMIT);
    /* A uid change alone drops root's groups too. */
    if ((p->uid >= 0 || p->gid >= 0) && syscall(SYS_setgroups, 0, NULL) < 0)
        FAIL(STEP_SETGROUPS);
    if (p->gid >= 0 && syscall(SYS_setresgid, (gid_t)p->gid, (gid_t)p->gid, (gid_t)p->gid) < 0)
        FAIL(STEP_SETRESGID);
    if (p->uid >= 0) {
        if (syscall(SYS_setresuid, (uid_t)p->uid, (uid_t)p->uid, (uid_t)p->uid) < 0)
            FAIL(STEP_SETRESUID);
        if (!credentials_ok(p)) {
            errno = EPERM;
            FAIL(STEP_VERIFY);
        }
    }
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        FAIL(STEP_NO_NEW_PRIVS);
    /* Ignored signals stay ignored across execve, and no handler may run
     * here (Python's C handler on the parent's memory).  The raw call: glibc
     * refuses its internal signals 32 and 33 (EINVAL), which an ancestor may
     * have left ignored.  All zeros is SIG_DFL, no flags, empty mask in the
     * kernel's struct on every ABI. */
    for (i = 1; i < _NSIG; i++)
        if (i != SIGKILL && i != SIGSTOP)
            (void)syscall(SYS_rt_sigaction, i, dfl, NULL, (size_t)(_NSIG / 8));
    sigemptyset(&none);
    if (sigprocmask(SIG_SETMASK, &none, NULL) < 0)
        FAIL(STEP_SIGMASK);
    /* Like execvp: ENOENT, ENOTDIR and EACCES try the next candidate; report
     * the first error that is neither ENOENT nor ENOTDIR, else the last. */
    for (i = 0; p->executables[i] != NULL; i++) {
        execve(p->executables[i], p->argv, p->envp);
        err = errno;
        if (first == 0 && err != ENOENT && err != ENOTDIR)
            first = err;
        if (err != ENOENT && err != ENOTDIR && err != EACCES)
            break;
    }
    errno = first ? first : err;
    FAIL(STEP_EXEC);
}

#if defined(__x86_64__) && defined(__linux__)
#define HAVE_CLONE_INTO 1
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#define FLAG_CLONE_INTO_CGROUP 0x200000000ULL
#define CHILD_STACK_BYTES (64 * 1024)

/* The kernel's struct clone_args up to its cgroup field (CLONE_ARGS_SIZE_VER2). */
struct clone_args_v2 {
    uint64_t flags, pidfd, child_tid, parent_tid, exit_signal, stack,
        stack_size, tls, set_tid, set_tid_size, cgroup;
};

/* The child's stack.  spawn() holds the GIL throughout and the parent is
 * suspended until the child has exec'd or exited (CLONE_VFORK), so one
 * stack serves every spawn. */
static char child_stack[CHILD_STACK_BYTES] __attribute__((aligned(16)));

/* clone3() with the child calling child_exec(p, f) on child_stack.  The
 * child starts on the new stack with the parent's registers: the callee-saved
 * ones carry the function and its arguments across the syscall, and the
 * child never returns from the call. */
static pid_t __attribute__((noinline))
clone_into(int cgroup_fd, const struct plan *p, volatile struct failure *f)
{
    struct clone_args_v2 args;
    register long rax __asm__("rax") = SYS_clone3;
    register struct clone_args_v2 *rdi __asm__("rdi") = &args;
    register long rsi __asm__("rsi") = (long)sizeof args;
    register void (*r12)(const struct plan *, volatile struct failure *) __asm__("r12") = child_exec;
    register const struct plan *r13 __asm__("r13") = p;
    register volatile struct failure *r14 __asm__("r14") = f;

    memset(&args, 0, sizeof args);
    args.flags = CLONE_VM | CLONE_VFORK | FLAG_CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.stack = (uint64_t)(uintptr_t)child_stack;
    args.stack_size = sizeof child_stack;
    args.cgroup = (uint64_t)cgroup_fd;
    __asm__ volatile(
        "syscall\n\t"
        "test %%rax, %%rax\n\t"
        "jnz 1f\n\t"
        "xor %%ebp, %%ebp\n\t"
        "mov %%r13, %%rdi\n\t"
        "mov %%r14, %%rsi\n\t"
        "call *%%r12\n\t"
        "ud2\n\t"
        "1:\n\t"
        : "+r"(rax)
        : "r"(rdi), "r"(rsi), "r"(r12), "r"(r13), "r"(r14)
        : "rcx", "r11", "memory", "cc");
    if (rax < 0) {
        errno = (int)-rax;
        return -1;
    }
    return (pid_t)rax;
}
#endif

/* Apart from spawn() so that few of its locals are live across vfork().
 * The child is made by vfork(), or born in the cgroup cgroup_fd (>= 0). */
static pid_t __attribute__((noinline))
do_spawn(int cgroup_fd, const struct plan *p, volatile struct failure *f, int *err)
{
    sigset_t all, old;
    pid_t pid;

    /* As CPython: no signal handler may run in the child, on our memory,
     * before it has reset the dispositions. */
    sigfillset(&all);
    if ((*err = pthread_sigmask(SIG_BLOCK, &all, &old)) != 0)
        return -1;
    if (cgroup_fd >= 0) {
#ifdef HAVE_CLONE_INTO
        pid = clone_into(cgroup_fd, p, f);
#else
        errno = ENOSYS;
        pid = -1;
#endif
    } else if ((pid = vfork()) == 0)
        child_exec(p, f);
    *err = errno;
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    return pid;
}

/* A tuple copy of a sequence of bytes (kept alive in *hold) and a
 * NULL-terminated array of pointers into it.  TypeError for an item that is
 * not bytes, ValueError for an embedded NUL (PyBytes_AsStringAndSize). */
static char **
to_array(PyObject *seq, PyObject **hold)
{
    Py_ssize_t i, n;
    char **out;

    if ((*hold = PySequence_Tuple(seq)) == NULL)
        return NULL;
    n = PyTuple_GET_SIZE(*hold);
    if ((out = PyMem_New(char *, n + 1)) == NULL)
        return (char **)PyErr_NoMemory();
    for (i = 0; i < n; i++)
        if (PyBytes_AsStringAndSize(PyTuple_GET_ITEM(*hold, i), &out[i], NULL) < 0) {
            PyMem_Free(out);
            return NULL;
        }
    out[n] = NULL;
    return out;
}

/* Items (resource, soft, hard), -1 meaning RLIM_INFINITY as in the resource
 * module. */
static struct limit *
to_limits(PyObject *seq, Py_ssize_t *n)
{
    PyObject *tuple = PySequence_Tuple(seq);
    struct limit *out = NULL;
    long long soft, hard;
    Py_ssize_t i;

    if (tuple == NULL)
        return NULL;
    *n = PyTuple_GET_SIZE(tuple);
    if ((out = PyMem_New(struct limit, *n + 1)) == NULL) {
        PyErr_NoMemory();
        goto error;
    }
    for (i = 0; i < *n; i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (!PyTuple_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "rlimits items must be tuples");
            goto error;
        }
        if (!PyArg_ParseTuple(item, "iLL:rlimits", &out[i].resource, &soft, &hard))
            goto error;
        if (out[i].resource < 0 || out[i].resource >= RLIM_NLIMITS || soft < -1 || hard < -1) {
            PyErr_SetString(PyExc_ValueError, "invalid rlimits item");
            goto error;
        }
        out[i].value.rlim_cur = soft == -1 ? RLIM_INFINITY : (rlim_t)soft;
        out[i].value.rlim_max = hard == -1 ? RLIM_INFINITY : (rlim_t)hard;
    }
    Py_DECREF(tuple);
    return out;
error:
    Py_DECREF(tuple);
    PyMem_Free(out);
    return NULL;
}

/* OSError(errno, strerror, filename) for the exec and chdir steps, worded as
 * subprocess does; OSError(errno, "step: strerror") for the others. */
static void
raise_failure(int step, int err, const char *argv0, const char *cwd)
{
    char text[200];
    PyObject *exc;

    errno = err;
    if (step == STEP_EXEC || step == STEP_CHDIR) {
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, step == STEP_EXEC ? argv0 : cwd);
        return;
    }
    PyOS_snprintf(text, sizeof text, "%s: %s", step_names[step], strerror(err));
    if ((exc = PyObject_CallFunction(PyExc_OSError, "is", err, text)) != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
}

static PyObject *
spawn(PyObject *Py_UNUSED(module), PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"executables", "argv", "envp", "cwd", "stdin",
                             "stdout", "stderr", "keep_fd", "uid", "gid",
                             "umask", "rlimits", "cgroup_fd", NULL};
    PyObject *seqs[3], *hold[3] = {NULL, NULL, NULL}, *limits, *result = NULL;
    struct plan p = {0};
    volatile struct failure f = {STEP_OK, 0};
    int err = 0, status, dumpable, i, cgroup_fd = -1;
    pid_t pid;

    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "OOOyiiiiLLiO|i:spawn", kwlist, &seqs[0], &seqs[1],
            &seqs[2], &p.cwd, &p.stdio[0], &p.stdio[1], &p.stdio[2],
            &p.keep_fd, &p.uid, &p.gid, &p.umask, &limits, &cgroup_fd))
        return NULL;
    if (p.stdio[0] < 0 || p.stdio[1] < 0 || p.stdio[2] < 0)
        return PyErr_Format(PyExc_ValueError, "stdin, stdout and stderr must be fds");
    if (p.keep_fd != -1 && p.keep_fd < 3)
        return PyErr_Format(PyExc_ValueError, "keep_fd must be -1 or >= 3");
    if (p.umask < -1 || p.umask > 0777)
        return PyErr_Format(PyExc_ValueError, "umask must be -1 or in [0, 0o777]");
    if (p.uid < -1 || p.uid >= 0xFFFFFFFFLL || p.gid < -1 || p.gid >= 0xFFFFFFFFLL)
        return PyErr_Format(PyExc_ValueError, "uid and gid must be -1 or in [0, 2**32-2]");
    if ((p.executables = to_array(seqs[0], &hold[0])) == NULL
        || (p.argv = to_array(seqs[1], &hold[1])) == NULL
        || (p.envp = to_array(seqs[2], &hold[2])) == NULL
        || (p.limits = to_limits(limits, &p.n_limits)) == NULL)
        goto done;
    if (p.executables[0] == NULL || p.argv[0] == NULL) {
        PyErr_SetString(PyExc_ValueError, "executables and argv must not be empty");
        goto done;
    }
    /* The child's id change makes the kernel mark the mm it shares with us
     * non-dumpable (so that uid cannot ptrace it before the exec: good); the
     * mark would outlive the child on the supervisor: undo it. */
    dumpable = p.uid >= 0 || p.gid >= 0 ? prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) : -1;
    pid = do_spawn(cgroup_fd, &p, &f, &err);
    if (dumpable == 1)
        (void)prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
    if (pid < 0) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
    } else if (f.step != STEP_OK) {
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
            ;
        raise_failure(f.step, f.err, p.argv[0], p.cwd);
    } else
        result = PyLong_FromLong((long)pid);
done:
    PyMem_Free(p.executables);
    PyMem_Free(p.argv);
    PyMem_Free(p.envp);
    PyMem_Free(p.limits);
    for (i = 0; i < 3; i++)
        Py_XDECREF(hold[i]);
    return result;
}

/* Whether this kernel (and build) can clone into a cgroup: a clone3() with
 * CLONE_INTO_CGROUP and no valid fd fails with EBADF where the flag is known,
 * before anything is created (ENOSYS without clone3, EINVAL without the
 * flag). */
static PyObject *
clone_into_supported(PyObject *Py_UNUSED(module), PyObject *Py_UNUSED(args))
{
#ifdef HAVE_CLONE_INTO
    struct clone_args_v2 args;
    long ret;

    memset(&args, 0, sizeof args);
    args.flags = FLAG_CLONE_INTO_CGROUP;
    args.exit_signal = SIGCHLD;
    args.cgroup = (uint64_t)-1 >> 33;   /* far above any open fd */
    ret = syscall(SYS_clone3, &args, sizeof args);
    if (ret == 0)
        _exit(127);   /* cannot happen: the fd is not open */
    if (ret > 0) {
        (void)waitpid((pid_t)ret, NULL, 0);
        Py_RETURN_FALSE;
    }
    return PyBool_FromLong(errno == EBADF);
#else
    Py_RETURN_FALSE;
#endif
}

static PyMethodDef methods[] = {
    {"clone_into_supported", clone_into_supported, METH_NOARGS,
     "clone_into_supported($module)\n--\n\nWhether spawn() can take a cgroup_fd"
     " (clone3 with CLONE_INTO_CGROUP, x86-64)."},
    {"spawn", (PyCFunction)(void (*)(void))spawn, METH_VARARGS | METH_KEYWORDS,
     "spawn($module, executables, argv, envp, cwd, stdin, stdout, stderr,"
     " keep_fd, uid, gid, umask, rlimits, cgroup_fd=-1)\n--\n\nStart a child through"
     " vfork(), or born in the cgroup v2 directory cgroup_fd (see"
     " execgo/host/_spawn.c), and return its pid; the caller reaps it."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "execgo.host._spawn", .m_size = 0,
    .m_doc = "vfork()-based spawning with a uid/gid change (raw syscalls).",
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit__spawn(void)
{
    return PyModule_Create(&module);
}
