//! TEMPORARY stand-in until the sandbox branch merges.
#![allow(missing_docs, dead_code)]
#[derive(Clone, Copy)]
pub enum PatchMode {
    Merge,
    Replace,
}
#[derive(Clone)]
pub struct SandboxConfig {
    pub api_key: String,
    pub requests_per_second: u32,
    pub patch_mode: PatchMode,
    pub latency: std::time::Duration,
}
impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            api_key: "sandbox-key".into(),
            requests_per_second: 10,
            patch_mode: PatchMode::Merge,
            latency: std::time::Duration::ZERO,
        }
    }
}
pub struct SandboxHandle;
impl SandboxHandle {
    pub async fn start(_c: SandboxConfig) -> std::io::Result<Self> {
        unimplemented!()
    }
    pub async fn start_on(_c: SandboxConfig, _a: std::net::SocketAddr) -> std::io::Result<Self> {
        unimplemented!()
    }
    pub fn base_url(&self) -> String {
        unimplemented!()
    }
    pub fn api_key(&self) -> &str {
        unimplemented!()
    }
    pub async fn shutdown(self) {}
}
