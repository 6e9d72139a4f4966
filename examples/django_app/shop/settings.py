"""One settings file for the demo shop; everything that differs per machine comes from the environment.

No database: the session lives in a signed cookie and the users are a fixed demo list
(``shop.views.USERS``), so there is nothing to migrate.
"""

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "demo-only-change-me-demo-only-change-me-demo-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["shop"]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True, "OPTIONS": {}}]
DATABASES: dict[str, dict[str, str]] = {}
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
SESSION_COOKIE_HTTPONLY = True
USE_TZ = True

# The gateway. The token secret is the one of the `auth:` jwt authenticator that the
# channels endpoint names in `token_auth`; the API key is the endpoint's `api_key`.
WSGATE_URL = os.environ.get("WSGATE_URL", "http://127.0.0.1:8080").rstrip("/")
WSGATE_ENDPOINT = "/connection/websocket"
WSGATE_API_URL = f"{WSGATE_URL}{WSGATE_ENDPOINT}/api"
WSGATE_WS_URL = WSGATE_URL.replace("http", "ws", 1) + WSGATE_ENDPOINT
WSGATE_TOKEN_SECRET = os.environ.get("WSGATE_TOKEN_SECRET", "")
WSGATE_API_KEY = os.environ.get("WSGATE_API_KEY", "")
WSGATE_TOKEN_TTL = 600  # seconds; centrifuge-js asks /connection-token again before it runs out

# The browser build of centrifuge-js (npm package `centrifuge`), served by the app itself.
CENTRIFUGE_JS = Path(os.environ.get(
    "CENTRIFUGE_JS", REPO / "tests" / "node" / "node_modules" / "centrifuge" / "dist" / "centrifuge.js"))
