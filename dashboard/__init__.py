"""The operator dashboard (server-rendered, htmx). For now a landing page; see issue 4."""
