//! The rule for `meta.graph_url`: `https`, or `http` to this machine only. Each request carries
//! the access token and hashed customer data in its body; over plain HTTP anyone on the path
//! reads them. Plain HTTP stays possible for a loopback host: `capi-sync sandbox` and tests.

use std::net::{IpAddr, Ipv6Addr};

/// The problem with a `graph_url`, naming the key; `None` when it is acceptable.
pub(super) fn problem(raw: &str) -> Option<String> {
    let url = match url::Url::parse(raw) {
        Ok(u) => u,
        // Not echoed: a string that is no URL may be a mistyped secret.
        Err(e) => return Some(format!("key `meta.graph_url`: is not a URL ({e})")),
    };
    let host = url.host_str().unwrap_or("");
    match url.scheme() {
        "https" if !host.is_empty() => None,
        "http" if is_loopback(&url) => None,
        "http" => Some(format!(
            "key `meta.graph_url`: `http://{host}` is plain HTTP to another machine; use https (the access token and hashed customer data travel in each request). http is accepted only for a loopback host (127.0.0.0/8, ::1, localhost), e.g. `capi-sync sandbox`"
        )),
        scheme => Some(format!(
            "key `meta.graph_url`: the scheme `{scheme}` is not https (e.g. https://graph.facebook.com)"
        )),
    }
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.');
            d.eq_ignore_ascii_case("localhost")
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => is_loopback_v6(ip),
        None => false,
    }
}

fn is_loopback_v6(ip: Ipv6Addr) -> bool {
    ip.is_loopback()
        || ip
            .to_ipv4_mapped()
            .is_some_and(|v4| IpAddr::V4(v4).is_loopback())
}

#[cfg(test)]
mod tests {
    use super::problem;

    #[test]
    fn https_anywhere_and_http_to_loopback_are_accepted() {
        for ok in [
            "https://graph.facebook.com",
            "https://proxy.example:8443/graph",
            "http://127.0.0.1:8089",
            "http://127.3.4.5",
            "http://[::1]:9000",
            "http://localhost:8089",
            "http://LOCALHOST.",
        ] {
            assert_eq!(problem(ok), None, "{ok}");
        }
    }

    #[test]
    fn http_to_another_host_or_another_scheme_is_refused_naming_the_key() {
        for bad in [
            "http://graph.facebook.com",
            "http://10.0.0.5:8080",
            "http://[::2]",
            "http://localhost.example.com",
            "http://128.0.0.1",
            "ftp://127.0.0.1",
            "graph.facebook.com",
        ] {
            let p = problem(bad).unwrap_or_else(|| panic!("{bad} accepted"));
            assert!(p.contains("meta.graph_url"), "{p}");
        }
        let p = problem("http://user:hunter2@proxy.corp:8080/x").unwrap();
        assert!(!p.contains("hunter2"), "{p}");
        assert!(p.contains("proxy.corp") && p.contains("https"), "{p}");
    }
}
