"""The web app's routes, one router per concern: `api` (the JSON API under /api), `files`
(the collection's images and thumbnails, by id) and `pages` (the HTML pages)."""
