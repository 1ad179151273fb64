//! A request that proves the token can reach a pixel without sending an event:
//! `GET {graph_url}/{api_version}/{pixel_id}?fields=id`, the token in an `Authorization:
//! Bearer` header (never in the URL, which proxies and access logs keep). Its answer must be
//! the Graph API's (`{"id": "..."}` or Meta's error envelope), so it also proves that
//! `graph_url` leads to the Graph API and not to a proxy's page.

use super::{answer, map_reqwest, GraphClient, NotGraphKind, SinkError};

#[derive(serde::Deserialize)]
struct Object {
    id: String,
}

impl GraphClient {
    /// The pixel's URL without the `/events` edge, for messages.
    pub fn pixel_url(&self, pixel_id: &str) -> String {
        format!("{}/{}", self.base, pixel_id)
    }

    /// Asks the Graph API for the pixel's id with the token. `Ok` means the token is valid
    /// and can see the pixel; errors carry Meta's code for [`SinkError::class`], or are
    /// [`SinkError::NotGraph`] when something else answered.
    pub async fn check_pixel(&self, pixel_id: &str) -> Result<(), SinkError> {
        let resp = self
            .http
            .get(self.pixel_url(pixel_id))
            .query(&[("fields", "id")])
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(map_reqwest)?;
        self.read_object(resp, NotGraphKind::NoObject, |body| {
            serde_json::from_slice::<Object>(body)
                .ok()
                .filter(|o| !o.id.is_empty())
                .map(|_| ())
        })
        .await
    }

    /// Reads the answer to a `GET` of a Graph object: what `parse` makes of a 2xx body, or the
    /// failure naming the status, the path and the body's first bytes (never the token) when
    /// the answer is not 2xx, is over the size cap, or is not what `parse` takes (`kind`).
    pub(super) async fn read_object<T>(
        &self,
        resp: reqwest::Response,
        kind: NotGraphKind,
        parse: impl FnOnce(&[u8]) -> Option<T>,
    ) -> Result<T, SinkError> {
        let url = resp.url().clone();
        let answer = answer::read(resp).await?;
        let asked = answer::Asked {
            url: &url,
            token: self.token.expose(),
            sent: &[],
        };
        if !(200..300).contains(&answer.status) || answer.too_large {
            return Err(answer.failure(&asked, NotGraphKind::NoEnvelope));
        }
        parse(&answer.body).ok_or_else(|| answer.failure(&asked, kind))
    }
}
