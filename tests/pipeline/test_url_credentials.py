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


def test_a_sources_identity_drops_credential_query_keys_and_keeps_those_that_select_data():
    """What names a partial download and data/source.json: a token CI rotates each run (Azure SAS, S3/GCS presigned,
    a generic token) must not make the same file another source; ?version=2 or S3's versionId selects data."""
    from pipeline.url_credentials import source_identity

    assert source_identity("https://u:p@acct.blob.core.windows.net/sales/?sv=2024-01-01&ss=b&srt=co&sp=rl"
                           "&se=2026-12-07T00:00Z&st=2026-12-06&spr=https&sig=a%2Bb%3D&version=2#top") == \
        "https://acct.blob.core.windows.net/sales/?version=2"
    assert source_identity("https://b.s3.amazonaws.com/train.csv.gz?versionId=v7&X-Amz-Algorithm=AWS4-HMAC-SHA256"
                           "&x-amz-credential=K%2F1&X-Amz-Signature=ff") == \
        "https://b.s3.amazonaws.com/train.csv.gz?versionId=v7"
    assert source_identity("https://storage.googleapis.com/b/x.zip?X-Goog-Signature=1&Token=t&API_KEY=k") == \
        "https://storage.googleapis.com/b/x.zip"
    for unchanged in ("/data/my-sales?sig=x", "file:///data/sales", "synthetic", "https://host/a?b"):
        assert source_identity(unchanged) == unchanged


def test_credential_query_keys_are_dropped_whether_fields_are_split_by_ampersand_or_semicolon():
    """Found in review: fields were split on `&` alone, so in `?sp=r;sig=SECRET` (the `;` form servers still accept)
    the token was part of one kept field, written to data/source.json and named the partial download. Fields that
    select data are kept with the separator written before them."""
    from pipeline.url_credentials import shown_url, source_identity

    for separator in ("&", ";"):
        url = f"https://acct.blob.core.windows.net/sales/?version=2{separator}sp=r{separator}sig=SECRET{separator}b=1"
        assert source_identity(url) == f"https://acct.blob.core.windows.net/sales/?version=2{separator}b=1", url
        assert shown_url(url) == "https://acct.blob.core.windows.net/sales/", url
    assert source_identity("https://h/d/?sig=SECRET;version=2&se=2026;b=1") == "https://h/d/?version=2;b=1"
    assert source_identity("https://h/d/?sv=1;sig=SECRET") == "https://h/d/"
