"""The login a URL carries is never shown: whatever characters its password holds."""

from pipeline.url_credentials import split_credentials, without_credentials


def test_a_password_with_a_raw_at_sign_or_quote_is_taken_out_whole():
    """Found in review: `[^/\\s@'"]+@` stopped at the password's first `@` or quote, so
    "http://u:p@ss@host" was shown as "http://ss@host" and "http://u:pa'ss@host" whole. urlsplit (and so
    MLflow, urllib) takes the login up to the last `@` before the host's end (`/`, `?`, `#`)."""
    for login in ("u:p@ss", "u:pa'ss", 'u:pa"ss', "u:a@b@c"):
        url = f"http://{login}@host:9200/api/2.0/x"
        assert split_credentials(url)[0] == "http://host:9200/api/2.0/x"
        shown = without_credentials(f"API request to {url} failed ('{url}')")
        assert shown == "API request to http://host:9200/api/2.0/x failed ('http://host:9200/api/2.0/x')", shown


def test_text_after_a_url_without_a_login_is_kept():
    """An `@` after the host's end (a path, a query) or after a space is no login."""
    text = "GET http://host:9200/users/a@b?mail=c@d and http://h?x=y@z, user@host"
    assert without_credentials(text) == text


def test_a_urls_shown_form_has_no_query_token_login_or_fragment():
    """A folder's SAS or presigned token is its query, and went with each file's URL into every line download and
    source printed. A path is no URL: a `?` in a folder's name is kept."""
    from pipeline.url_credentials import shown_url

    for url, shown in [("https://acct.blob.core.windows.net/c/data/?sv=2024-01-01&sig=SECRET",
                        "https://acct.blob.core.windows.net/c/data/"),
                       ("HTTPS://b.s3.amazonaws.com/train.csv?X-Amz-Signature=SECRET#x",
                        "https://b.s3.amazonaws.com/train.csv"),
                       ("http://u:p@ss@[::1]:8000/x.zip?t=1", "http://[::1]:8000/x.zip"),
                       ("/data/what?now", "/data/what?now"), ("synthetic", "synthetic")]:
        assert shown_url(url) == shown, url
