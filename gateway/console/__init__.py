"""The ops console under ``/console``: server-rendered pages for ops keys (issue 14).

``routes`` has the pages, ``figures`` what they show, ``svg`` the charts, ``sessions`` the
sign-in, ``i18n`` the words (zh-CN by default, English on request). Everything a page needs
(CSS, the one small script) is served from ``/console/static``: no CDN, the gateway runs on an
intranet.
"""

from __future__ import annotations

from gateway.console.routes import router

__all__ = ["router"]
