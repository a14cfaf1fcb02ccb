"""Code every Habla service shares: settings, codec, messaging, state, storage."""
