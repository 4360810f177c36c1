"""What every response gets: security headers, and pages instead of bare errors.

Domain errors (unknown, expired or used tokens, a failed CSRF check) become pages with the right
status here, in one place, so the views stay short. The pages say nothing about any sender.
"""

from __future__ import annotations

import logging
import re

from aiohttp import web

from ingest.confirm import ChallengeGone, ChallengeNotFound
from web.csrf import CsrfError
from web.keys import PAGES

log = logging.getLogger(__name__)
TOKEN = re.compile(r"/confirm/[^/]+")

NOT_FOUND = ("Link not found", "This link is not valid. If you copied it from a mail, check that you copied "
                               "all of it.")
GONE = {
    "expired": ("This link has expired", "The confirmation link is no longer valid. If you write to us "
                                         "again, you will get a new one."),
    "used": ("This link has already been used", "The confirmation is done; there is nothing more to do."),
    "closed": ("This link is no longer valid", "Our team has already dealt with the message it was for."),
}
FORBIDDEN = ("Please try again", "The form could not be checked. Open the link from the mail again and "
                                 "press the button there.")
FAILED = ("Something went wrong", "Please try again in a few minutes.")


@web.middleware
async def error_pages(request: web.Request, handler):
    pages = request.app[PAGES]
    try:
        return await handler(request)
    except (ChallengeNotFound, web.HTTPNotFound):
        heading, text, status = *NOT_FOUND, 404
    except ChallengeGone as e:
        heading, text, status = *GONE.get(e.why, GONE["closed"]), 410
    except CsrfError as e:
        log.info("confirmation refused by the CSRF check: %s", e)
        heading, text, status = *FORBIDDEN, 403
    except web.HTTPException:
        raise  # redirects, 405: as they are
    except Exception:
        log.exception("%s %s failed", request.method, TOKEN.sub("/confirm/…", request.path))  # no tokens in logs
        heading, text, status = *FAILED, 500
    return pages.render("error.html", status=status, heading=heading, text=text)


# For replies no page made (aiohttp's own 400 to a request it could not parse): nothing may load at all.
BARE_CSP = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"


def protect(headers, csp: str) -> None:
    """Our security headers, and no `Server: Python/3.x aiohttp/3.y` banner naming versions to attack."""
    headers.popall("Server", None)
    headers["Referrer-Policy"] = "no-referrer"  # the token in the URL must not leak to other sites
    headers["Content-Security-Policy"] = csp
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Cache-Control"] = "no-store"
    headers["X-Robots-Tag"] = "noindex, nofollow"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: on every routed response, errors and redirects included (after aiohttp has
    added its default headers, so the banner can be removed here)."""
    protect(response.headers, request.app[PAGES].csp)
