"""Tests of gating."""
