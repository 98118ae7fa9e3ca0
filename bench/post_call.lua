-- wrk script for bench/api.sh: every request creates a call with POST .../Calls.json.
-- The Authorization header and the URL come from wrk's command line (-H and the URL).
wrk.method = "POST"
wrk.body = "To=%2B15558675310&From=%2B15005550006&Url=https%3A%2F%2Fexample.com%2Ft"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
