//! Extractors whose rejections are our JSON errors with stable codes.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use berth_core::ErrorCode;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::error::Error;

/// `Json<T>` whose failures are `invalid_request` (400) or
/// `payload_too_large` (413).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError(json_rejection(rejection))),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return Error::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the request body is larger than this endpoint takes ({} bytes; {} for state-store batches)",
                super::MAX_BODY_BYTES,
                super::MAX_STORE_BATCH_BYTES
            ),
        );
    }
    let message = match &rejection {
        JsonRejection::MissingJsonContentType(_) => {
            "the request body must be JSON with \"Content-Type: application/json\"".to_string()
        }
        other => format!("the request body is not valid: {}", other.body_text()),
    };
    Error::invalid(message)
}

/// `Query<T>` whose failures are `invalid_request` (400).
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(ApiError(query_rejection(rejection))),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> Error {
    Error::invalid(format!(
        "the query string is not valid: {}",
        rejection.body_text()
    ))
}
