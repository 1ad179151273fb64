//! A request that proves the token can reach a pixel without sending an event:
//! `GET {graph_url}/{api_version}/{pixel_id}?fields=id`, the token in an `Authorization:
//! Bearer` header (never in the URL, which proxies and access logs keep).

use super::{map_reqwest, ErrorEnvelope, GraphClient, SinkError};

impl GraphClient {
    /// The pixel's URL without the `/events` edge, for messages.
    pub fn pixel_url(&self, pixel_id: &str) -> String {
        format!("{}/{}", self.base, pixel_id)
    }

    /// Asks the Graph API for the pixel's id with the token. `Ok` means the token is valid
    /// and can see the pixel; errors carry Meta's code for [`SinkError::class`].
    pub async fn check_pixel(&self, pixel_id: &str) -> Result<(), SinkError> {
        let resp = self
            .http
            .get(self.pixel_url(pixel_id))
            .query(&[("fields", "id")])
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(map_reqwest)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(map_reqwest)?;
        if (200..300).contains(&status) {
            return Ok(());
        }
        match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
            Ok(env) => Err(SinkError::Api {
                status,
                error: Box::new(env.error),
                retry_after: None,
            }),
            Err(_) => Err(SinkError::Http {
                status,
                retry_after: None,
            }),
        }
    }
}
