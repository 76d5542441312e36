"""The HTTP service: API, web page, prediction log and drift monitor."""
