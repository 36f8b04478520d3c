"""The app's routes by job; `app.create_app` includes every router of `ROUTERS`."""

from . import compare, features, inspect, pages, steer

ROUTERS = [pages.router, features.router, inspect.router, compare.router, steer.router]
