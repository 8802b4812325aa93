//! `GET /api/openapi.json`: the OpenAPI 3.1 document (docs/openapi.json), served as written.
//! A test checks that it lists every route and operation the router serves.

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("../../../docs/openapi.json");

pub async fn handler() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use allo_common::ops::Operation;

    #[test]
    fn the_document_lists_every_operation() {
        let doc: serde_json::Value = serde_json::from_str(super::DOCUMENT).expect("valid JSON");
        for op in Operation::ALL {
            let path = format!("/api/chat/{}", op.as_str());
            assert!(
                doc["paths"][&path]["post"].is_object(),
                "{path} missing from docs/openapi.json"
            );
        }
        let documented = doc["paths"].as_object().expect("paths").len();
        assert_eq!(
            documented,
            Operation::ALL.len() + 12,
            "a route is missing or stale"
        );
    }
}
