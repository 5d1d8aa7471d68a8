"""MoLE's HTTP frontend: a Falcon app under gunicorn (threaded workers) in front of the broker.

``frontend.app.create_app`` builds the app from its parts (settings, dispatcher, gating,
users, analytics, tokens, metrics); ``frontend.wsgi`` builds those parts per gunicorn
worker process; ``mole frontend`` (``frontend.cli``) checks the settings and starts
gunicorn; ``mole users`` (``frontend.users_cli``) manages users and the admin role.
"""
