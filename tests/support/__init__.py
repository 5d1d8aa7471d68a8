"""Shared test helpers: process spawners, free ports, waits, raw MDP peers."""
