"""
Packaging for execgo: the C{execgo} package, the C{execgo-runtime} console
script and the C{execgo} twistd plugin dropin.
"""

import re
from pathlib import Path

from setuptools import Extension, find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "execgo" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="execgo",
    version=VERSION,
    description="A durable task-execution runtime for one host, on Twisted.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(exclude=["tests*", "benchmarks*"]) + ["twisted.plugins"],
    package_data={
        "twisted": ["plugins/execgo_plugin.py"],
        "execgo.host": ["_spawn.pyi"],
        # The operator page's static files (execgo/server/web/page.py).
        "execgo.server.web": ["ui/*"],
    },
    # Optional: without a compiler the install still works and the caller
    # falls back to subprocess.Popen.
    ext_modules=[Extension("execgo.host._spawn", ["execgo/host/_spawn.c"], optional=True)],
    install_requires=[
        "twisted>=25.5",
        "klein>=23.5",
        "treq>=23.11",
        "txaio>=23.1",
        "attrs>=23.1",
        "click>=8.1",
        # The PostgreSQL store (--database-url postgresql://...).  A plain
        # dependency, not an extra: a runtime moved onto PostgreSQL must
        # not need a second install step, and the binary wheel brings its
        # own libpq, so nothing is needed from the host either.
        "psycopg[binary]>=3.1",
    ],
    # Kept for those who install what the PostgreSQL documentation says:
    # the same as a plain install.
    extras_require={"postgres": []},
    entry_points={"console_scripts": ["execgo-runtime = execgo.cli.main:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
    ],
)
