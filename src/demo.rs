//! temporary stub
#[derive(Clone, Debug, Default)]
pub struct DemoOptions {
    pub chunk_delay: std::time::Duration,
    pub first_byte_delay: std::time::Duration,
}
pub struct DemoUpstream {
    addr: std::net::SocketAddr,
}
impl DemoUpstream {
    pub async fn start(
        addr: std::net::SocketAddr,
        _opts: DemoOptions,
    ) -> std::io::Result<DemoUpstream> {
        Ok(DemoUpstream { addr })
    }
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn shutdown(&self) {}
}
