"""The SigV4 verifier against botocore, the reference signer: canonical requests, signatures, errors."""

from __future__ import annotations

import logging
import random
import string
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes, urlsplit

import boto3
import pytest
from botocore.config import Config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from p2pcache import sigv4
from p2pcache.errors import AccessDenied, MalformedAuthorization, RequestTimeTooSkewed

ENDPOINT = "http://127.0.0.1:9000"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


class _Sent(Exception):
    """Raised from botocore's before-send hook: the request is signed, nothing goes out."""


class Recorder(logging.Handler):
    """Captures botocore's own canonical request from its debug log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.canonical: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg.startswith("CanonicalRequest"):
            self.canonical = record.args[0]


@pytest.fixture(scope="module")
def signer():
    """A boto3 client whose signed requests are captured instead of sent, with botocore's canonical request."""
    recorder = Recorder()
    logger = logging.getLogger("botocore.auth")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(recorder)
    sent = {}

    def capture(request, **_):
        sent["request"] = request
        raise _Sent()

    clients = {}
    for name, region, s3 in (("us-east-1", "us-east-1", {}), ("eu-central-1", "eu-central-1", {}),
                             ("unsigned-payload", "us-east-1", {"payload_signing_enabled": False})):
        client = boto3.client("s3", endpoint_url=ENDPOINT, region_name=region, aws_access_key_id="AKIDEXAMPLE",
                              aws_secret_access_key=SECRET,
                              config=Config(signature_version="s3v4", retries={"max_attempts": 1}, s3=s3))
        client.meta.events.register("before-send.s3", capture)
        clients[name] = client

    def sign(region: str, operation: str, **params):
        recorder.canonical = None
        with pytest.raises(_Sent):
            getattr(clients[region], operation)(**params)
        request = sent["request"]
        headers = CIMultiDict((k, v.decode() if isinstance(v, bytes) else v) for k, v in request.headers.items())
        headers["Host"] = urlsplit(request.url).netloc  # what urllib3 sends
        return request.method, request.url, headers, recorder.canonical

    sign.presign = lambda region, operation, params, expires=300: clients[region].generate_presigned_url(
        operation, Params=params, ExpiresIn=expires)
    yield sign
    logger.removeHandler(recorder)
    logger.setLevel(level)


def verify(method: str, url: str, headers: CIMultiDict, secret: str = SECRET) -> tuple[sigv4.SignedRequest, str, bool]:
    """What a worker computes for this request: the claim, the canonical request, and whether it verifies."""
    parts = urlsplit(url)
    query = sigv4.query_pairs(parts.query)
    signed = sigv4.parse(headers, query)
    canonical = sigv4.canonical_request(method, parts.path, query, headers, signed)
    key = sigv4.derive_signing_key(secret, signed.date, signed.region, signed.service)
    return signed, canonical, sigv4.signature(key, sigv4.string_to_sign(signed, canonical)) == signed.signature


# Object keys: any text S3 takes (no NUL or surrogates), biased towards what needs encoding.
object_keys = st.lists(st.one_of(st.sampled_from(list("/ .~+%?#&=!'()*[]{}@:;,$\"<>\\^`|-_") + ["..", "//"]),
                                 st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
                       min_size=1, max_size=40).map("".join)
query_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
header_text = st.text(st.sampled_from(list(string.ascii_letters + string.digits + " \t-_=;,/")), max_size=20)
regions = st.sampled_from(["us-east-1", "eu-central-1"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=object_keys, region=regions, disposition=query_text, rng=st.integers(0, 10**12))
@example(key="a b/ü+%?#~!'()*&=.bin", region="us-east-1", disposition='x y; z="q"', rng=5)
@example(key="../x/./y//z/", region="us-east-1", disposition="", rng=0)
def test_get_object_canonical_request_is_botocores(signer, key, region, disposition, rng):
    params = {"ResponseContentDisposition": disposition} if disposition else {}
    method, url, headers, theirs = signer(region, "get_object", Bucket="bkt", Key=key,
                                          Range=f"bytes={rng}-", **params)
    signed, mine, ok = verify(method, url, headers)
    assert mine == theirs
    assert ok and signed.region == region and signed.payload_hash == sigv4.EMPTY_SHA256


def test_unsigned_payload_as_boto3_sends_it_without_payload_signing(signer):
    method, url, headers, theirs = signer("unsigned-payload", "get_object", Bucket="bkt", Key="a b", Range="bytes=0-")
    signed, mine, ok = verify(method, url, headers)
    assert headers["X-Amz-Content-SHA256"] == sigv4.UNSIGNED_PAYLOAD == signed.payload_hash
    assert mine == theirs and ok


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=query_text, delimiter=query_text, start_after=query_text, max_keys=st.integers(1, 1000))
def test_listing_queries_are_sorted_and_encoded_like_botocore(signer, prefix, delimiter, start_after, max_keys):
    method, url, headers, theirs = signer("us-east-1", "list_objects_v2", Bucket="bkt", Prefix=prefix,
                                          Delimiter=delimiter, StartAfter=start_after, MaxKeys=max_keys)
    assert verify(method, url, headers)[1:] == (theirs, True)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=object_keys, extra=st.dictionaries(st.sampled_from(["x-amz-meta-a", "x-custom", "x-amz-foo"]),
                                              header_text, max_size=2))
def test_header_values_are_trimmed_and_collapsed_like_botocore(signer, key, extra):
    method, url, headers, theirs = signer("us-east-1", "head_object", Bucket="bkt", Key=key, IfMatch='  "e  t"  ')
    for name, value in extra.items():
        headers[name] = value  # unsigned: the canonical request must ignore them
    assert verify(method, url, headers)[1:] == (theirs, True)


@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=object_keys, region=regions, content_type=query_text, expires=st.integers(1, sigv4.MAX_EXPIRES))
def test_presigned_urls_verify(signer, key, region, content_type, expires):
    params = {"Bucket": "bkt", "Key": key} | ({"ResponseContentType": content_type} if content_type else {})
    url = signer.presign(region, "get_object", params, expires)
    headers = CIMultiDict(Host=urlsplit(url).netloc)
    signed, _, ok = verify("GET", url, headers)
    assert ok and signed.presigned and signed.expires == expires
    assert signed.payload_hash == sigv4.UNSIGNED_PAYLOAD
    assert not verify("GET", url, headers, secret=SECRET + "x")[2]
    assert not verify("HEAD", url, headers)[2]  # the method is signed


@settings(max_examples=200)
@given(key=object_keys, seed=st.integers(0, 2**32))
def test_any_escaping_of_the_same_path_canonicalises_to_botocores(key, seed):
    """Lower-case hex, escaped unreserved characters or bare sub-delimiters: one canonical path."""
    rnd = random.Random(seed)
    reference = "/bkt/" + quote(key, safe="/~")
    raw = ["/bkt/"]
    for byte in key.encode():
        char = chr(byte)
        if char == "/" or (byte < 128 and char.isalnum() and rnd.random() < 0.7):
            raw.append(char)
        elif byte < 128 and char in "!$'()*,;:@" and rnd.random() < 0.5:
            raw.append(char)  # RFC 3986 allows these bare in a path
        else:
            raw.append(("%%%02x" if rnd.random() < 0.5 else "%%%02X") % byte)
    assert sigv4.canonical_uri("".join(raw)) == reference


_edges = [0x2F, 0x30, 0x39, 0x41, 0x5A, 0x61, 0x7A, 0x2D, 0x2E, 0x5F, 0x7E, 0x20, 0x25, 0x2B, 0x40, 0x60, 0x7F, 0xFF]
_bytes = st.one_of(st.sampled_from(_edges), st.sampled_from(range(256)))  # the class edges, often
# Mostly canonical-looking input (unreserved characters, upper-case escapes), where the fast
# path applies, and input with lower-case escapes, stray `%`, `+` and sub-delimiters, where it must not.
escaped_text = st.one_of(
    st.lists(st.one_of(st.sampled_from(list("aZ09-._~/")), _bytes.map(lambda b: f"%{b:02X}")), max_size=12),
    st.lists(st.one_of(st.sampled_from(list("aZ09-._~/+ !*%")), _bytes.map(lambda b: f"%{b:02X}"),
                       _bytes.map(lambda b: f"%{b:02x}")), max_size=30),
).map("".join)


@settings(max_examples=500)
@given(raw=escaped_text)
@example(raw="a%2Fb%41%7E%2D%5F%30%2e")
def test_the_fast_path_for_canonical_input_agrees_with_decoding_and_encoding_again(raw):
    """Input already in canonical form is passed through; the rest is decoded and encoded again."""
    assert sigv4.canonical_uri("/" + raw) == quote_from_bytes(unquote_to_bytes("/" + raw), safe="/~")
    slow = quote_from_bytes(unquote_to_bytes(raw.replace("+", " ")), safe="-_.~")
    assert sigv4.query_pairs(f"{raw}={raw}") == [(slow, slow)]


def test_query_pairs_without_value_repeats_and_plus_as_space():
    query = sigv4.query_pairs("b=2&a&b=1&c=x+y%2Bz&&d=%7e")
    assert sigv4.canonical_query(query, presigned=False) == "a=&b=1&b=2&c=x%20y%2Bz&d=~"
    assert sigv4.canonical_query(sigv4.query_pairs("X-Amz-Signature=ab&x=1"), presigned=True) == "x=1"


def signed_request(**changes) -> sigv4.SignedRequest:
    base = dict(key_id="AKID", date="20240102", region="us-east-1", service="s3", timestamp="20240102T030405Z",
                signed_headers=("host",), signature="0" * 64, payload_hash=sigv4.EMPTY_SHA256)
    return sigv4.SignedRequest(**(base | changes))


SIGNED_AT = 1704164645.0  # 2024-01-02T03:04:05Z


def test_header_signatures_hold_for_fifteen_minutes_either_side():
    for now in (SIGNED_AT - 900, SIGNED_AT, SIGNED_AT + 900):
        sigv4.check_time(signed_request(), now)
    for now in (SIGNED_AT - 901, SIGNED_AT + 901):
        with pytest.raises(RequestTimeTooSkewed):
            sigv4.check_time(signed_request(), now)


def test_presigned_urls_hold_until_they_expire_not_before_their_time():
    url = signed_request(expires=3600)
    for now in (SIGNED_AT - 900, SIGNED_AT + 3600):
        sigv4.check_time(url, now)
    with pytest.raises(AccessDenied, match="^Request has expired$"):
        sigv4.check_time(url, SIGNED_AT + 3601)
    with pytest.raises(AccessDenied, match="not valid yet"):
        sigv4.check_time(url, SIGNED_AT - 901)


def test_signing_keys_are_derived_once_per_scope_and_bounded():
    keys = sigv4.SigningKeys(max_entries=2)
    first = keys.get("AKID", SECRET, "20240102", "us-east-1", "s3")
    assert first == sigv4.derive_signing_key(SECRET, "20240102", "us-east-1", "s3")
    assert keys.get("AKID", SECRET, "20240102", "us-east-1", "s3") is first  # cached, not derived again
    for region in ("a", "b", "c"):
        keys.get("AKID", SECRET, "20240102", region, "s3")
    assert len(keys) == 2


H = {"X-Amz-Date": "20240102T030405Z"}
AUTH = "AWS4-HMAC-SHA256 Credential=AKID/20240102/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=" + "0" * 64
PRESIGNED = ("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKID%2F20240102%2Fus-east-1%2Fs3%2Faws4_request"
             "&X-Amz-Date=20240102T030405Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=" + "0" * 64)


@pytest.mark.parametrize(("headers", "query", "code", "message"), [
    ({"Authorization": "AWS AKID:c2ln"}, "", "InvalidRequest", "Please use AWS4-HMAC-SHA256"),
    ({}, "AWSAccessKeyId=AKID&Signature=x&Expires=1", "InvalidRequest", "Please use AWS4-HMAC-SHA256"),
    ({"Authorization": AUTH, **H}, PRESIGNED, "InvalidArgument", "Only one auth mechanism"),
    ({"Authorization": "AWS4-HMAC-SHA256 Credential=AKID/20240102/us-east-1/s3/aws4_request", **H}, "",
     "AuthorizationHeaderMalformed", "missing SignedHeaders, Signature"),
    ({"Authorization": AUTH.replace("/s3/", "/ec2/"), **H}, "", "AuthorizationHeaderMalformed", 'incorrect service "ec2"'),
    ({"Authorization": AUTH.replace("20240102/", "20240101/"), **H}, "", "AuthorizationHeaderMalformed",
     "Date is not the same as X-Amz-Date"),
    ({"Authorization": AUTH.replace("aws4_request", "aws5"), **H}, "", "AuthorizationHeaderMalformed", "mal-formed"),
    ({}, PRESIGNED.replace("&X-Amz-Expires=60", ""), "AuthorizationQueryParametersError", "X-Amz-Expires parameters"),
    ({}, PRESIGNED.replace("X-Amz-Expires=60", "X-Amz-Expires=604801"), "AuthorizationQueryParametersError",
     "less than a week"),
    ({}, PRESIGNED.replace("X-Amz-Expires=60", "X-Amz-Expires=" + "9" * 5000), "AuthorizationQueryParametersError",
     "less than a week"),
    ({}, PRESIGNED.replace("X-Amz-Expires=60", "X-Amz-Expires=%C2%B2"), "AuthorizationQueryParametersError",
     "should be a number"),
    ({}, PRESIGNED.replace("X-Amz-Date=20240102T030405Z", "X-Amz-Date=2024-01-02"),
     "AuthorizationQueryParametersError", "ISO8601"),
    ({}, PRESIGNED.replace("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256"), "AuthorizationQueryParametersError",
     "only supports"),
])
def test_malformed_signatures_get_s3s_400_codes(headers, query, code, message):
    with pytest.raises(MalformedAuthorization) as raised:
        sigv4.parse(CIMultiDict(headers), sigv4.query_pairs(query))
    assert raised.value.status == 400 and raised.value.code == code
    assert message in raised.value.message


def test_a_signature_without_a_usable_date_is_access_denied():
    for headers in ({"Authorization": AUTH}, {"Authorization": AUTH, "X-Amz-Date": "yesterday"}):
        with pytest.raises(AccessDenied, match="valid Date or x-amz-date"):
            sigv4.parse(CIMultiDict(headers), [])
    signed = sigv4.parse(CIMultiDict({"Authorization": AUTH, "Date": "Tue, 02 Jan 2024 03:04:05 GMT"}), [])
    assert signed.timestamp == "20240102T030405Z"
    assert signed.payload_hash == sigv4.EMPTY_SHA256  # no x-amz-content-sha256: a generic signer's empty body


_auth_parts = st.sampled_from(["AWS4-HMAC-SHA256 ", "Credential=", "AKID/", "20240102/", "us-east-1/", "s3/",
                               "aws4_request", ", ", ",", "SignedHeaders=", "host;x-amz-date", "Signature=", "0" * 64,
                               "=", " ", "/", "\t"])
_query_parts = st.sampled_from(["X-Amz-Algorithm=", "AWS4-HMAC-SHA256", "&X-Amz-Credential=", "AKID%2F20240102",
                                "%2Fus-east-1%2Fs3%2Faws4_request", "%2Fus-east-1%2Fs%0D%0A3%2Faws4_request", "&X-Amz-Date=", "20240102T030405Z",
                                "&X-Amz-Expires=", "60", "99999999999", "&X-Amz-SignedHeaders=host",
                                "&X-Amz-Signature=", "&", "=", "%", "%FF", "+", "AWSAccessKeyId"])


@settings(max_examples=500)
@given(auth=st.one_of(st.none(), st.lists(_auth_parts, max_size=12).map("".join), st.text(max_size=40)),
       date=st.one_of(st.none(), st.sampled_from(["20240102T030405Z", "20241332T250000Z", "Tue, 02 Jan 2024 03:04:05 GMT",
                                                  "Tue, 02 Jan 99999 03:04:05 GMT", "Mon, 31 Feb 2024 00:00:00 +9999"]),
                      st.text(max_size=30)),
       query=st.one_of(st.lists(_query_parts, max_size=14).map("".join), st.text(max_size=40)))
@example(auth=None, date=None, query=PRESIGNED.replace("%2Fs3%2F", "%2Fs%0D%0A3%2F"))
@example(auth=AUTH.replace("/s3/", "/s\x013/"), date="20240102T030405Z", query="")
def test_any_authorization_or_query_parses_or_gets_an_s3_error(auth, date, query):
    """Never an unexpected exception (a 500) for whatever a client sends."""
    headers = CIMultiDict()
    if auth is not None:
        headers["Authorization"] = auth
    if date is not None:
        headers["X-Amz-Date" if date[:1].isdigit() else "Date"] = date
    try:
        signed = sigv4.parse(headers, sigv4.query_pairs(query))
        if signed is not None:
            sigv4.check_time(signed, SIGNED_AT)
            sigv4.canonical_request("GET", "/b/k", sigv4.query_pairs(query), headers, signed)
    except (MalformedAuthorization, AccessDenied) as exc:
        assert exc.message.isprintable(), exc.message  # it is echoed in a response header


def test_unsigned_requests_parse_to_none_and_unsigned_amz_headers_are_found():
    assert sigv4.parse(CIMultiDict({"Range": "bytes=0-1"}), sigv4.query_pairs("list-type=2&prefix=x")) is None
    headers = CIMultiDict({"Authorization": AUTH, "X-Amz-Date": "20240102T030405Z", "X-Amz-Meta-Evil": "1"})
    signed = sigv4.parse(headers, [])
    assert sigv4.unsigned_amz_headers(headers, signed) == ["x-amz-date", "x-amz-meta-evil"]
