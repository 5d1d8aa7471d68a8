"""MoLE's HTTP frontend: a Falcon ASGI app under gunicorn's uvicorn worker, in front of the
broker.

``frontend.app.create_app`` builds the app from its parts (settings, dispatcher, gating,
users, analytics, tokens, metrics); ``frontend.asgi`` builds those parts per gunicorn
worker process and wraps the app in ``frontend.guard`` (lifespan, connection cap);
``frontend.server`` is the gunicorn worker class and its guarded HTTP protocol;
``mole frontend`` (``frontend.cli``) checks the settings and starts gunicorn; ``mole
users`` (``frontend.users_cli``) manages users and the admin role.
"""
