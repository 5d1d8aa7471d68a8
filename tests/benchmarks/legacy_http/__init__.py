"""The HTTP coordinator -> HTTP worker design MoLE replaces, rebuilt for bench_http.py."""
