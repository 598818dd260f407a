"""Development tools of alfa-ad (not part of the installed package)."""
