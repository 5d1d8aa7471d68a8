"""Tests of frontend."""
