//! Where a credential may be sent: each credential names its origins
//! (scheme, host, port, and optionally a path prefix), and an http step
//! whose URL is not under one of them fails before anything is sent. A
//! run's input or a tenant's template can choose a step's URL; only the
//! operator who stored the credential chooses where it goes.

use std::fmt;

/// `https://erp.example.com`, `http://127.0.0.1:8080/api`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    scheme: String,
    host: String,
    port: u16,
    /// Always starts with `/`; `/` admits every path.
    path: String,
}

impl std::str::FromStr for Origin {
    type Err = String;

    fn from_str(text: &str) -> Result<Origin, String> {
        let url = reqwest::Url::parse(text.trim())
            .map_err(|e| format!("{text:?} is not an origin like https://erp.example.com: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("{text:?}: an origin is http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: an origin holds no user or password"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?}: an origin has no query or fragment"));
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(format!("{text:?}: an origin names a host"));
        };
        Ok(Origin {
            scheme: url.scheme().to_owned(),
            host: host.to_owned(),
            port,
            path: url.path().to_owned(),
        })
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        let default = if self.scheme == "https" { 443 } else { 80 };
        if self.port != default {
            write!(f, ":{}", self.port)?;
        }
        if self.path != "/" {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

impl Origin {
    /// Whether `url` is under this origin: the same scheme, host and port,
    /// and a path at or below the origin's (`/api` admits `/api` and
    /// `/api/orders`, not `/apix`).
    pub fn admits(&self, url: &reqwest::Url) -> bool {
        let path = url.path();
        // Below a path prefix, what a server may read as another path is
        // refused: encoded dots and slashes, and `;` (`/api/..;/admin`).
        let lower = path.to_ascii_lowercase();
        let ambiguous = ["%2e", "%2f", "%5c", ";", "\\"]
            .iter()
            .any(|s| lower.contains(s));
        if self.path != "/" && ambiguous {
            return false;
        }
        let under = self.path == "/"
            || path == self.path
            || path
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| self.path.ends_with('/') || rest.starts_with('/'));
        url.scheme() == self.scheme
            && url.host_str() == Some(self.host.as_str())
            && url.port_or_known_default() == Some(self.port)
            && under
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &str) -> Origin {
        text.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn url(text: &str) -> reqwest::Url {
        reqwest::Url::parse(text).expect("a url")
    }

    #[test]
    fn an_origin_admits_its_own_urls_only() {
        let erp = origin("https://ERP.example.com");
        assert_eq!(erp.to_string(), "https://erp.example.com");
        for admitted in [
            "https://erp.example.com/",
            "https://erp.example.com:443/orders?x=1",
        ] {
            assert!(erp.admits(&url(admitted)), "{admitted}");
        }
        for refused in [
            "http://erp.example.com/",
            "https://erp.example.com:8443/",
            "https://erp.example.com.evil.test/",
            "https://evil.test/?https://erp.example.com",
            "https://sub.erp.example.com/",
        ] {
            assert!(!erp.admits(&url(refused)), "{refused}");
        }
    }

    #[test]
    fn a_path_prefix_admits_its_segment_and_below() {
        let api = origin("http://127.0.0.1:8080/api");
        assert_eq!(api.to_string(), "http://127.0.0.1:8080/api");
        assert!(api.admits(&url("http://127.0.0.1:8080/api")));
        assert!(api.admits(&url("http://127.0.0.1:8080/api/orders")));
        assert!(!api.admits(&url("http://127.0.0.1:8080/apix")));
        assert!(!api.admits(&url("http://127.0.0.1:8080/")));
        assert!(!api.admits(&url("http://127.0.0.1:8080/api/../admin")));
        for ambiguous in [
            "http://127.0.0.1:8080/api/..;/admin",
            "http://127.0.0.1:8080/api/..%2fadmin",
            "http://127.0.0.1:8080/api/%2e%2e%2Fadmin",
            "http://127.0.0.1:8080/api/%5C..%5Cadmin",
        ] {
            assert!(!api.admits(&url(ambiguous)), "{ambiguous}");
        }
    }

    #[test]
    fn what_is_not_an_origin_says_why() {
        for (text, why) in [
            ("erp.example.com", "is not an origin"),
            ("ftp://erp.example.com", "http or https"),
            ("https://user:pw@erp.example.com", "no user or password"),
            ("https://erp.example.com/?key=1", "no query"),
        ] {
            let error = text.parse::<Origin>().unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
