"""URL checks made before any connection (pipeline.intake.urls): schemes, userinfo, literal and numeric IPs."""

from __future__ import annotations

import ipaddress

import pytest

from pipeline.errors import JobRejected
from pipeline.intake.urls import check_url, is_numeric_host, is_public_address, redact_url


@pytest.mark.parametrize("url", [
    "file:///etc/passwd",
    "ftp://example.com/product.jpg",
    "data:image/png;base64,iVBORw0KGgo=",
    "gopher://example.com:70/_GET",
    "javascript:alert(1)",
    "dict://example.com:11211/stat",
    "//example.com/product.jpg",
    "example.com/product.jpg",
    "",
])
def test_non_http_scheme_is_url_not_allowed(url: str) -> None:
    with pytest.raises(JobRejected) as caught:
        check_url(url)
    assert caught.value.code == "url_not_allowed"


@pytest.mark.parametrize("url", [
    "http://user:secret@example.com/product.jpg",
    "https://user@example.com/product.jpg",
])
def test_userinfo_is_url_not_allowed_and_not_echoed(url: str) -> None:
    with pytest.raises(JobRejected) as caught:
        check_url(url)
    assert caught.value.code == "url_not_allowed"
    assert "secret" not in caught.value.message and "user" not in caught.value.details["url"]


@pytest.mark.parametrize("host", [
    "127.0.0.1", "127.8.9.10", "10.0.0.1", "172.16.5.4", "192.168.1.1",
    "169.254.169.254",       # cloud metadata
    "100.64.0.1",            # carrier-grade NAT
    "0.0.0.0", "224.0.0.1", "255.255.255.255",
    "[::1]", "[::]", "[fe80::1]", "[fc00::1]",
    "[fd00:ec2::254]",        # AWS metadata over IPv6
    "[::ffff:127.0.0.1]", "[::ffff:169.254.169.254]",
    "[64:ff9b::7f00:1]",      # NAT64 of 127.0.0.1
    "[2002:a00:1::]",         # 6to4 of 10.0.0.1
    "[ff02::1]",              # multicast
])
def test_non_public_literal_ip_is_url_blocked(host: str) -> None:
    with pytest.raises(JobRejected) as caught:
        check_url(f"http://{host}:8080/product.jpg")
    assert caught.value.code == "url_blocked"


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1", "0x7f.0.0.1", "017700000001"])
def test_numeric_host_forms_are_url_blocked(host: str) -> None:
    with pytest.raises(JobRejected) as caught:
        check_url(f"http://{host}/product.jpg")
    assert caught.value.code == "url_blocked"


def test_public_urls_pass_with_their_parts() -> None:
    named = check_url("https://cdn.shopify.com/s/files/mug.jpg?v=17&token=abc")
    assert (named.scheme, named.host, named.port, named.ip) == ("https", "cdn.shopify.com", 443, None)
    assert named.redacted == "https://cdn.shopify.com/s/files/mug.jpg"
    literal = check_url("http://93.184.216.34:8080/a.png")
    assert literal.ip == ipaddress.ip_address("93.184.216.34") and literal.port == 8080
    assert check_url("http://[2606:4700:4700::1111]/a.png").ip == ipaddress.ip_address("2606:4700:4700::1111")


def test_allow_private_and_allowlist_open_only_what_they_name() -> None:
    assert check_url("http://127.0.0.1:8080/a.png", allow_private=True).ip is not None

    def allow(host: str, ip: object, port: int) -> bool:
        return host == "127.0.0.1" and port == 8080

    assert check_url("http://127.0.0.1:8080/a.png", allow_address=allow).port == 8080
    with pytest.raises(JobRejected) as caught:
        check_url("http://127.0.0.1:8081/a.png", allow_address=allow)
    assert caught.value.code == "url_blocked"
    with pytest.raises(JobRejected):
        check_url("http://10.0.0.1:8080/a.png", allow_address=allow)


def test_messages_never_carry_the_query_string() -> None:
    for url in ("http://169.254.169.254/latest?token=SECRET", "ftp://example.com/a.jpg?sig=SECRET"):
        with pytest.raises(JobRejected) as caught:
            check_url(url)
        assert "SECRET" not in caught.value.message
        assert "SECRET" not in str(caught.value.to_dict())


def test_redact_url_strips_query_fragment_userinfo_and_survives_garbage() -> None:
    assert redact_url("https://u:p@shop.example/a.jpg?sig=x#frag") == "https://shop.example/a.jpg"
    assert redact_url("http://u:p@example.com:99999/x?token=1") == "http://example.com:99999/x"  # bad port
    assert len(redact_url("data:image/png;base64," + "A" * 10_000)) <= 200


def test_is_public_address_and_numeric_host_helpers() -> None:
    assert is_public_address(ipaddress.ip_address("8.8.8.8"))
    assert not is_public_address(ipaddress.ip_address("64:ff9b::a00:1"))
    assert is_public_address(ipaddress.ip_address("64:ff9b::808:808"))
    assert is_numeric_host("1.2.3") and not is_numeric_host("1.2.3.example")
