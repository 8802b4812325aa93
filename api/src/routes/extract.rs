//! `Query` and `Path` as axum's, except that a value that cannot be read is refused with our
//! problem+json (422 `invalid`, naming the parameter) instead of axum's plain-text 400: every
//! bad input gets the same kind of answer, and the client learns which parameter was wrong.

use std::collections::HashSet;

use axum::extract::FromRequestParts;
use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The query string, deserialized into `T`.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Query)
    }
}

fn parse_query<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    // A parameter given twice is ambiguous: refused, named, rather than "duplicate field".
    let mut seen = HashSet::new();
    for (name, _) in url::form_urlencoded::parse(query.as_bytes()) {
        if !seen.insert(name.clone()) {
            return Err(ApiError::bad_parameter(&name, "given more than once"));
        }
    }
    let pairs = url::form_urlencoded::parse(query.as_bytes());
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        let field = e.path().to_string();
        let field = if field == "." { "query" } else { &field };
        ApiError::bad_parameter(field, format!("invalid value ({})", e.into_inner()))
    })
}

/// The path's parameters, deserialized into `T` (strings: the routes parse ids themselves).
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(Path(value)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::InvalidUtf8InPathParam { key }
                    | ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. } => key.clone(),
                    _ => "path".to_string(),
                };
                Err(ApiError::bad_parameter(&field, e.body_text()))
            }
            Err(e) => Err(ApiError::Internal(anyhow::anyhow!("path parameters: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Page {
        limit: Option<i64>,
        status: Option<String>,
    }

    fn field(e: ApiError) -> String {
        match e {
            ApiError::BadParameter { field, .. } => field,
            other => panic!("not a bad parameter: {other:?}"),
        }
    }

    #[test]
    fn a_bad_query_names_its_parameter() {
        assert!(parse_query::<Page>("limit=5&status=open&other=x").is_ok());
        let e = parse_query::<Page>("limit=null").expect_err("not a number");
        assert_eq!(field(e), "limit");
        let e = parse_query::<Page>("status=a&status=b").expect_err("twice");
        assert_eq!(field(e), "status");
    }
}
