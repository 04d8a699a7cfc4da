//! The DSDL container protocol's wire format: what a Splunk search head sends to `/fit` and
//! `/apply` (a JSON envelope around a CSV of rows) and the results CSV it expects back. No HTTP
//! here: the endpoints are in `http::dsdl`.

pub mod csvscan;
pub mod envelope;
pub mod results;
pub mod table;
