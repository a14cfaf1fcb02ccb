"""The site owner's console: sign up, get the snippet, customise the widget, manage
operators and read conversations. Served on its own origin under /account (see README,
"## console", for why it is not part of rpc_frontend)."""
