//! OTLP receivers: gRPC ([`grpc`]) and HTTP ([`http`]).
//!
//! Metrics are decoded, stored and batched for upstream export. Traces and logs are counted
//! (`loopwatch_agent_spans_received_total`, `loopwatch_agent_log_records_received_total`)
//! and forwarded upstream unchanged through the export queue ([`crate::export`]); without
//! `exporter.endpoint` they are dropped after counting.
//!
//! Status mapping (OTLP spec): success -> 200 / OK with an empty export response;
//! undecodable body -> 400 / INVALID_ARGUMENT; body over `receiver.max_body_bytes` after
//! decompression -> 413 (gRPC: OUT_OF_RANGE / RESOURCE_EXHAUSTED from tonic's message
//! limit); unsupported content type or encoding -> 415; over a service/series/memory cap ->
//! 429 / RESOURCE_EXHAUSTED. Refusals are counted in
//! `loopwatch_agent_requests_refused_total{reason}`.

pub(crate) mod budget;
pub(crate) mod grpc;
pub(crate) mod grpc_budget;
pub(crate) mod http;
