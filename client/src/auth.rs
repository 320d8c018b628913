//! The bearer token on every call: the server reads the tenant from it.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::Error;

/// Adds `authorization: Bearer <token>` to each call, or nothing when the
/// client has no token (a single-process server without tokens serves
/// everyone as tenant `local`).
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    pub(crate) fn new(token: Option<&str>) -> Result<Self, Error> {
        let Some(token) = token else {
            return Ok(Bearer(None));
        };
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
            .parse()
            .map_err(|_| Error::InvalidToken)?;
        // Kept out of debug output and HPACK's index.
        value.set_sensitive(true);
        Ok(Bearer(Some(value)))
    }
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Bearer(<token>)"
        } else {
            "Bearer(none)"
        })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_travels_as_a_bearer_header() {
        let mut bearer = Bearer::new(Some("acme-token-0123456789")).expect("ascii token");
        let request = bearer.call(Request::new(())).expect("never refuses");
        let value = request
            .metadata()
            .get("authorization")
            .expect("header added");
        assert_eq!(
            value.to_str().expect("ascii"),
            "Bearer acme-token-0123456789"
        );
        assert!(value.is_sensitive());
        assert!(!format!("{bearer:?}").contains("acme"));
    }

    #[test]
    fn no_token_adds_no_header() {
        let mut bearer = Bearer::new(None).expect("no token");
        let request = bearer.call(Request::new(())).expect("never refuses");
        assert!(request.metadata().get("authorization").is_none());
    }

    #[test]
    fn a_token_a_header_cannot_carry_is_refused() {
        assert!(matches!(
            Bearer::new(Some("line\nbreak")),
            Err(Error::InvalidToken)
        ));
    }
}
