"""The console's Flask application: sessions, CSRF, roles, security headers.

Sessions are Flask's signed cookies (HttpOnly, Secure, SameSite=Strict) holding the
operator's name and password stamp, checked against ``console_operators`` on every
request, so disabling an operator or changing a password ends their sessions.  Every
POST carries Flask-WTF's CSRF token; a request without the right one is refused (400).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import Flask, g, redirect, render_template, request, session, url_for
from flask_wtf.csrf import CSRFError, CSRFProtect
from sqlalchemy import Engine

from infra.db.engine import get_engine, get_read_engine
from infra.settings import get_settings
from infra.logs import get_logger
from infra.web import actions, operators, pages
from infra.web.operators import ACTION_ROLES
from infra.web.settings import WebSettings, get_web_settings

log = get_logger(__name__)

CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def create_app(engine: Engine | None = None, settings: WebSettings | None = None,
               read_engine: Engine | None = None) -> Flask:
    """The console.  Parameters: engine (default: BALLAST_DATABASE_URL's), settings,
    read_engine: where the pages read (default: BALLAST_READ_DATABASE_URL's, a replica,
    when it is set; else ``engine``).  Logins, sessions, audit and actions use ``engine``."""
    settings = settings or get_web_settings()
    engine = engine or get_engine()
    if read_engine is None:
        read_engine = get_read_engine() if get_settings().read_database_url else engine
    app = Flask(__name__)
    if settings.secret_key:
        secret = settings.secret_key
    else:
        with engine.begin() as conn:
            secret = operators.secret_key(conn)
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_NAME="ballast_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=not settings.insecure_cookies,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        MAX_CONTENT_LENGTH=256 * 1024,
    )
    app.extensions["ballast.engine"] = engine
    app.extensions["ballast.read_engine"] = read_engine
    app.extensions["ballast.settings"] = settings
    CSRFProtect(app)

    app.register_blueprint(pages.bp)
    app.register_blueprint(actions.bp)

    @app.before_request
    def _who() -> Any:
        g.operator = None
        name = session.get("operator")
        if name:
            with engine.connect() as conn:
                op = operators.get(conn, name)
            if op is not None and session.get("stamp") == op.stamp:
                g.operator = op
            else:
                session.clear()
        if g.operator is None and request.endpoint not in ("pages.login", "pages.do_login", "static"):
            if request.method == "GET":
                return redirect(url_for("pages.login", next=request.full_path))
            return render_template("error.html", message="log in first"), 401
        return None

    @app.context_processor
    def _helpers() -> dict[str, Any]:
        def can(action: str) -> bool:
            op = g.get("operator")
            return bool(op and op.may(ACTION_ROLES[action]))

        return {"can": can, "operator": g.get("operator"), "refresh_s": settings.refresh_s}

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError):
        with engine.begin() as conn:
            # CSRF is checked before _who: the name is the signed session's claim.
            operators.audit(conn, session.get("operator"), "csrf", "refused",
                            {"path": request.path, "reason": exc.description},
                            request.remote_addr)
        return render_template("error.html", message=f"refused: {exc.description}"), 400

    @app.errorhandler(403)
    def _forbidden(exc):
        return render_template("error.html", message="your role may not do that"), 403

    @app.errorhandler(404)
    def _missing(exc):
        return render_template("error.html", message=getattr(exc, "description", "not found")), 404

    @app.after_request
    def _headers(resp):
        resp.headers.setdefault("Content-Security-Policy", CSP)
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        if resp.mimetype == "text/html":
            resp.headers["Cache-Control"] = "no-store"
        return resp

    return app


def engine_of(app: Flask) -> Engine:
    return app.extensions["ballast.engine"]
