//! http-01 validation (RFC 8555 §8.3): fetch
//! `http://<identifier>/.well-known/acme-challenge/<token>` and compare the
//! body with the key authorization. Names are resolved through the
//! configured resolver, never the system's; redirects are followed like
//! Boulder does (at most 10, http/https only, to ports 80/443 or the
//! configured ports), https redirects accept any certificate.
//!
//! The client is a small HTTP/1.1 one: one request per connection, bodies
//! capped, so a hostile server cannot make validation read much.
//!
//! <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::net::{self, Host};
use super::{ValidationError, ValidationRecord, ValidationSettings};
use crate::acme::Identifier;

/// Redirects followed before giving up (Boulder's limit).
const MAX_REDIRECTS: usize = 10;
/// Largest challenge response body read; a key authorization is ~90 bytes.
const MAX_BODY: usize = 8 * 1024;
/// Largest response head (status line and headers) read.
const MAX_HEAD: usize = 16 * 1024;

/// Validates http-01 for `identifier`: the body served at the challenge URL,
/// with trailing whitespace removed, must equal `key_authorization`.
///
/// <https://www.rfc-editor.org/rfc/rfc8555#section-8.3>
pub async fn validate(
    settings: &ValidationSettings,
    identifier: &Identifier,
    token: &str,
    key_authorization: &str,
) -> Result<ValidationRecord, ValidationError> {
    let what = format!("http-01 of {}", identifier.value());
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ValidationError::Malformed(format!(
            "{what}: the token is not base64url"
        )));
    }
    let host = match identifier {
        Identifier::Dns(name) => Host::Name(name.clone()),
        Identifier::Ip(ip) => Host::Ip(*ip),
    };
    let mut target = Target {
        https: false,
        host,
        port: settings.http_port,
        path: format!("/.well-known/acme-challenge/{token}"),
    };
    let mut record = ValidationRecord::default();
    loop {
        let url = target.url();
        record.urls.push(url.clone());
        let ips = target.host.resolve(settings).await.map_err(|e| match e {
            ValidationError::Dns(msg) => ValidationError::Dns(format!("{what}: {msg}")),
            other => other,
        })?;
        for ip in &ips {
            if !record.addresses_resolved.contains(ip) {
                record.addresses_resolved.push(*ip);
            }
        }
        // Every hop, the first included, connects only to allowed addresses.
        let hop = if record.urls.len() > 1 {
            format!("{what} (redirected to {url})")
        } else {
            what.clone()
        };
        settings
            .egress
            .check(&ips, &target.host.to_string(), &hop)?;
        let (stream, addr) = net::connect(settings, &ips, target.port, &what).await?;
        record.address_used = Some(addr);
        let response = if target.https {
            let config = net::insecure_client_config(vec![b"http/1.1".to_vec()])?;
            let name = match &target.host {
                Host::Ip(ip) => rustls::pki_types::ServerName::IpAddress((*ip).into()),
                Host::Name(name) => net::server_name(name)?,
            };
            let tls = TlsConnector::from(Arc::new(config))
                .connect(name, stream)
                .await
                .map_err(|e| {
                    ValidationError::Tls(format!(
                        "{what}: TLS handshake with {addr} for {url} failed: {e}"
                    ))
                })?;
            exchange(tls, &target, &url, addr, &what).await?
        } else {
            exchange(stream, &target, &url, addr, &what).await?
        };
        match response.status {
            200 => {
                check_body(
                    &response.body,
                    key_authorization,
                    &url,
                    record.address_used,
                    &what,
                )?;
                return Ok(record);
            }
            301 | 302 | 303 | 307 | 308 => {
                if record.urls.len() > MAX_REDIRECTS {
                    return Err(ValidationError::Connection(format!(
                        "{what}: too many redirects (more than {MAX_REDIRECTS}) starting at {}",
                        record.urls.first().map_or("", String::as_str)
                    )));
                }
                let Some(location) = response.location else {
                    return Err(ValidationError::Connection(format!(
                        "{what}: {url} answered {} without a Location header",
                        response.status
                    )));
                };
                target = redirect_target(settings, &target, &location).map_err(|why| {
                    ValidationError::Connection(format!(
                        "{what}: {url} redirected to {:?}, which is not followed: {why}",
                        truncate(&location, 200)
                    ))
                })?;
            }
            status => {
                return Err(ValidationError::Unauthorized(format!(
                    "{what}: {url} answered {status}; the server must serve the key \
                     authorization there with status 200"
                )));
            }
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    https: bool,
    host: Host,
    port: u16,
    /// Path and query, starting with `/`.
    path: String,
}

impl Target {
    fn default_port(&self) -> u16 {
        if self.https { 443 } else { 80 }
    }

    /// The Host header value: the host, with the port only if not the default.
    fn authority(&self) -> String {
        if self.port == self.default_port() {
            self.host.to_string()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}{}", self.authority(), self.path)
    }
}

/// A response as far as validation needs it.
#[derive(Debug)]
struct Response {
    status: u16,
    location: Option<String>,
    /// Only read for status 200.
    body: Vec<u8>,
}

/// Sends one GET and reads the response head, and the body for status 200.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
    url: &str,
    addr: SocketAddr,
    what: &str,
) -> Result<Response, ValidationError> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: acmeproxy-validation\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        target.path,
        target.authority()
    );
    let io_err = |e: std::io::Error| {
        ValidationError::Connection(format!(
            "{what}: fetching {url} from {addr} failed: {}",
            net::describe_io(&e)
        ))
    };
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;
    stream.flush().await.map_err(io_err)?;

    let mut buf = Vec::with_capacity(1024);
    let mut eof = false;
    loop {
        match parse_response(&buf, eof) {
            Ok(Parsed::Done(response)) => return Ok(response),
            Ok(Parsed::Incomplete) if !eof => {}
            // Never so at end of stream; kept so that a mistake cannot loop.
            Ok(Parsed::Incomplete) => {
                return Err(ResponseError::ClosedBeforeHead.into_validation(what, url, addr));
            }
            Err(e) => return Err(e.into_validation(what, url, addr)),
        }
        if read_more(&mut stream, &mut buf).await.map_err(io_err)? == 0 {
            eof = true;
        }
    }
}

/// What [`parse_response`] made of the bytes read so far.
#[derive(Debug)]
enum Parsed {
    /// More bytes are needed (never returned at end of stream).
    Incomplete,
    Done(Response),
}

/// Why a response could not be read. Messages built from it say what was
/// wrong and how much arrived, never what the server sent: the body and head
/// of a server that is not the client's may be another host's secrets.
#[derive(Debug, PartialEq, Eq)]
enum ResponseError {
    HeadTooLarge,
    ClosedBeforeHead,
    NotHttp,
    BadContentLength,
    BadChunked,
    BodyTooLarge,
    ClosedInBody { got: usize, expected: Option<usize> },
}

impl ResponseError {
    fn into_validation(self, what: &str, url: &str, addr: SocketAddr) -> ValidationError {
        match self {
            Self::HeadTooLarge => ValidationError::Connection(format!(
                "{what}: {url} (at {addr}) sent a response head larger than {MAX_HEAD} bytes"
            )),
            Self::ClosedBeforeHead => ValidationError::Connection(format!(
                "{what}: {addr} closed the connection before a complete HTTP response to {url}"
            )),
            Self::NotHttp => ValidationError::Connection(format!(
                "{what}: {addr} did not answer {url} with an HTTP/1.x status line"
            )),
            Self::BadContentLength => ValidationError::Connection(format!(
                "{what}: {url} (at {addr}) sent an invalid Content-Length"
            )),
            Self::BadChunked => ValidationError::Connection(format!(
                "{what}: {url} (at {addr}) sent a malformed chunked body"
            )),
            Self::BodyTooLarge => ValidationError::IncorrectResponse(format!(
                "{what}: {url} (at {addr}) answered with a body larger than {MAX_BODY} bytes; \
                 it must contain only the key authorization"
            )),
            Self::ClosedInBody {
                got,
                expected: Some(length),
            } => ValidationError::Connection(format!(
                "{what}: {addr} closed the connection after {got} of {length} body bytes of {url}"
            )),
            Self::ClosedInBody {
                got,
                expected: None,
            } => ValidationError::Connection(format!(
                "{what}: {addr} closed the connection in the middle of the body of {url} \
                 (after {got} bytes)"
            )),
        }
    }
}

/// Reads an HTTP/1.x response from the bytes received so far (`eof`: and no
/// more will come): the status and Location for every status, the body
/// (Content-Length, chunked or up to the end of the stream) for 200 only.
fn parse_response(buf: &[u8], eof: bool) -> Result<Parsed, ResponseError> {
    let head_end = find(buf, b"\r\n\r\n").map(|end| end + 4);
    // The same limit whether the head arrived in one read or in several.
    if head_end.map_or(buf.len(), |end| end - 4) > MAX_HEAD {
        return Err(ResponseError::HeadTooLarge);
    }
    let Some(head_end) = head_end else {
        return if eof {
            Err(ResponseError::ClosedBeforeHead)
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let head = String::from_utf8_lossy(buf.get(..head_end).unwrap_or_default());
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status(status_line).ok_or(ResponseError::NotHttp)?;
    let headers: Vec<(String, &str)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim()))
        .collect();
    let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
    let location = header("location").map(str::to_owned);
    if status != 200 {
        return Ok(Parsed::Done(Response {
            status,
            location,
            body: Vec::new(),
        }));
    }

    let rest = buf.get(head_end..).unwrap_or_default();
    let chunked =
        header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        match decode_chunked(rest) {
            Chunked::Done(body) => body,
            Chunked::Invalid => return Err(ResponseError::BadChunked),
            Chunked::TooLarge => return Err(ResponseError::BodyTooLarge),
            Chunked::Incomplete if rest.len() > 2 * MAX_BODY => {
                return Err(ResponseError::BodyTooLarge);
            }
            Chunked::Incomplete if eof => {
                return Err(ResponseError::ClosedInBody {
                    got: rest.len(),
                    expected: None,
                });
            }
            Chunked::Incomplete => return Ok(Parsed::Incomplete),
        }
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| ResponseError::BadContentLength)?;
        if length > MAX_BODY {
            return Err(ResponseError::BodyTooLarge);
        }
        match rest.get(..length) {
            Some(body) => body.to_vec(),
            None if eof => {
                return Err(ResponseError::ClosedInBody {
                    got: rest.len(),
                    expected: Some(length),
                });
            }
            None => return Ok(Parsed::Incomplete),
        }
    } else if rest.len() > MAX_BODY {
        return Err(ResponseError::BodyTooLarge);
    } else if eof {
        rest.to_vec()
    } else {
        return Ok(Parsed::Incomplete);
    };
    if body.len() > MAX_BODY {
        return Err(ResponseError::BodyTooLarge);
    }
    Ok(Parsed::Done(Response {
        status,
        location,
        body,
    }))
}

/// Reads what is available into `buf`; 0 at end of stream.
async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
    Ok(n)
}

/// The status code of an `HTTP/1.x NNN reason` line.
fn parse_status(line: &str) -> Option<u16> {
    let rest = line.strip_prefix("HTTP/1.")?;
    let mut parts = rest.splitn(3, ' ');
    let _minor = parts.next()?;
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

enum Chunked {
    Done(Vec<u8>),
    Incomplete,
    Invalid,
    TooLarge,
}

/// Decodes a chunked body (RFC 9112 §7.1); trailers are ignored.
fn decode_chunked(mut data: &[u8]) -> Chunked {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(data, b"\r\n") else {
            return Chunked::Incomplete;
        };
        let line = String::from_utf8_lossy(data.get(..line_end).unwrap_or_default()).into_owned();
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_text, 16) else {
            return Chunked::Invalid;
        };
        data = data.get(line_end + 2..).unwrap_or_default();
        if size == 0 {
            return Chunked::Done(body);
        }
        if size > MAX_BODY {
            return Chunked::TooLarge;
        }
        let (Some(chunk), Some(crlf)) = (data.get(..size), data.get(size..size + 2)) else {
            return Chunked::Incomplete;
        };
        if crlf != b"\r\n" {
            return Chunked::Invalid;
        }
        body.extend_from_slice(chunk);
        if body.len() > MAX_BODY {
            return Chunked::TooLarge;
        }
        data = data.get(size + 2..).unwrap_or_default();
    }
}

/// Checks the challenge response body against the key authorization. The
/// refusal says how long the body was, never what it held: the server
/// answering may not be the client's (a redirect target inside the network).
fn check_body(
    body: &[u8],
    key_authorization: &str,
    url: &str,
    addr: Option<SocketAddr>,
    what: &str,
) -> Result<(), ValidationError> {
    let text = String::from_utf8_lossy(body);
    let got = text.trim_end();
    if got == key_authorization {
        return Ok(());
    }
    let at = addr.map(|a| format!(" (at {a})")).unwrap_or_default();
    let bytes = if body.len() == 1 { "byte" } else { "bytes" };
    Err(ValidationError::IncorrectResponse(format!(
        "{what}: {url}{at} answered 200 with a body of {} {bytes} that is not the key \
         authorization {key_authorization:?} (token, '.', account key thumbprint)",
        body.len()
    )))
}

/// Follows `location` from `current`, checking scheme and port.
fn redirect_target(
    settings: &ValidationSettings,
    current: &Target,
    location: &str,
) -> Result<Target, String> {
    redirect_target_for(
        settings.http_port,
        settings.tls_alpn_port,
        current,
        location,
    )
}

/// [`redirect_target`] with the configured ports given.
fn redirect_target_for(
    http_port: u16,
    tls_alpn_port: u16,
    current: &Target,
    location: &str,
) -> Result<Target, String> {
    let location = location.split('#').next().unwrap_or_default();
    if location.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err("it contains spaces or control characters".to_owned());
    }
    let (https, rest) = if let Some(rest) = location.strip_prefix("//") {
        (current.https, Some(rest))
    } else if let Some((scheme, rest)) = location.split_once("://") {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => (false, Some(rest)),
            "https" => (true, Some(rest)),
            other => return Err(format!("only http and https are followed, not {other}")),
        }
    } else {
        (current.https, None)
    };
    let Some(rest) = rest else {
        // A reference within the same server.
        let path = if location.starts_with('/') {
            location.to_owned()
        } else {
            let base = current.path.split('?').next().unwrap_or_default();
            let dir = base.rsplit_once('/').map_or("", |(dir, _)| dir);
            format!("{dir}/{location}")
        };
        return Ok(Target {
            path,
            ..current.clone()
        });
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (
            rest.get(..i).unwrap_or_default(),
            rest.get(i..).unwrap_or_default(),
        ),
        None => (rest, "/"),
    };
    let path = if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_owned()
    };
    if authority.contains('@') {
        return Err("URLs with user information are not followed".to_owned());
    }
    let (host_text, port_text) = if let Some(v6) = authority.strip_prefix('[') {
        let (ip, after) = v6.split_once(']').ok_or("unterminated IPv6 address")?;
        (ip, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    let default_port = if https { 443 } else { 80 };
    let port = match port_text {
        None | Some("") => default_port,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("invalid port {p:?}"))?,
    };
    let mut allowed = vec![80, 443];
    for configured in [http_port, tls_alpn_port] {
        if !allowed.contains(&configured) {
            allowed.push(configured);
        }
    }
    if !allowed.contains(&port) {
        let list: Vec<String> = allowed.iter().map(u16::to_string).collect();
        return Err(format!(
            "port {port} is not allowed; redirects may only go to ports {}",
            list.join(", ")
        ));
    }
    // `127.0.0.1.` is the address too, not a name to look up.
    let host = match host_text.trim_end_matches('.').parse::<IpAddr>() {
        Ok(ip) => Host::Ip(ip),
        Err(_) if is_dns_name(host_text) => {
            Host::Name(host_text.trim_end_matches('.').to_ascii_lowercase())
        }
        Err(_) => return Err(format!("{host_text:?} is not a valid host name")),
    };
    Ok(Target {
        https,
        host,
        port,
        path,
    })
}

fn is_dns_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// At most `max` characters of `text`, with "…" when cut.
fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", text.get(..i).unwrap_or_default()),
        None => text.to_owned(),
    }
}

/// Fuzz harness (testkit/src/fuzzing.rs): `data` is a whole response as a
/// challenge server might send it. It is read at once and, when it ends its
/// head early enough, also cut in two as two reads would deliver it; what a
/// prefix decides must be what the whole decides. A 200 body is judged
/// against a key authorization, and a Location is followed. No message may
/// carry the response's content (the marker `zQ9` stands for it).
pub fn fuzz_response(data: &[u8]) {
    const MARKER: &str = "zQ9";
    let addr = SocketAddr::from(([192, 0, 2, 1], 80));
    let current = Target {
        https: false,
        host: Host::Name("example.com".to_owned()),
        port: 80,
        path: "/.well-known/acme-challenge/tok".to_owned(),
    };
    let url = current.url();
    let what = "http-01 of example.com";
    let no_marker = |e: &ValidationError| {
        assert!(!e.to_string().contains(MARKER), "response content in {e}");
    };
    let whole = parse_response(data, true);
    let response = match whole {
        Ok(Parsed::Done(r)) => r,
        Ok(Parsed::Incomplete) => panic!("a response at end of stream is never incomplete"),
        Err(e) => {
            no_marker(&e.into_validation(what, &url, addr));
            return;
        }
    };
    for cut in [data.len() / 2, data.len().saturating_sub(1), 4096] {
        if let Some(prefix) = data.get(..cut) {
            if let Ok(Parsed::Done(early)) = parse_response(prefix, false) {
                assert_eq!(
                    (early.status, &early.location, &early.body),
                    (response.status, &response.location, &response.body),
                    "a prefix of {cut} bytes was read differently"
                );
            }
        }
    }
    assert!(response.body.len() <= MAX_BODY);
    if response.status == 200 {
        if let Err(e) = check_body(&response.body, "tok.thumb", &url, Some(addr), what) {
            no_marker(&e);
        }
    }
    if let Some(location) = &response.location {
        if let Ok(next) = redirect_target_for(80, 443, &current, location) {
            assert!(
                [80, 443].contains(&next.port),
                "redirect to port {}",
                next.port
            );
            // The URL the validator would fetch leads back to the same target.
            let again = redirect_target_for(80, 443, &current, &next.url());
            assert_eq!(again.as_ref(), Ok(&next), "{location:?}");
        }
    }
}

#[cfg(test)]
mod tests;
