//! A multipart form as the demo's upload endpoints see it.
//!
//! Kept apart from `uploads` (which reads the form and dispatches) so the
//! endpoints depend on the form alone, not on their dispatcher.

/// A form as the endpoints see it.
pub(super) struct Form {
    pub(super) model: String,
    /// Text fields, a repeated one once per occurrence.
    pub(super) fields: Vec<(String, String)>,
    /// Size of the whole body: stands in for the file's length.
    pub(super) body_len: usize,
    /// Hash of the path and the body, seeding the reply.
    pub(super) hash: u64,
}

impl Form {
    /// The field's last value, as form readers take it.
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A `multipart/form-data` body (CRLF line ends), for tests.
#[cfg(test)]
pub(super) fn form_body(boundary: &str, fields: &[(&str, &str)], file: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    b.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    b.extend_from_slice(file);
    b.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    b
}
