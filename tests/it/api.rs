//! The REST API end to end (filled in below).
