"""
Tests for execgo, run by trial.
"""
