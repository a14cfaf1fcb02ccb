"""HTTP handlers of the console, one module per area (auth, sites, theme, operators,
conversations); the base module holds what they share."""
