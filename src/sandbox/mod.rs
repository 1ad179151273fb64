//! TEMPORARY STUB — replaced by the sandbox implementation.
use std::net::SocketAddr;
#[derive(Clone, Debug, Default)]
pub struct Faults { pub fail_rate: f64, pub throttle_rate: f64, pub drop_rate: f64, pub slow_ms: u64, pub reject_rate: f64, pub reject_event_ids: std::collections::HashSet<String>, pub seed: u64 }
pub struct SandboxConfig { pub token: Option<String>, pub record: Option<std::path::PathBuf>, pub faults: Faults, pub keep_in_memory: bool }
pub struct SandboxHandle { addr: SocketAddr }
impl SandboxHandle {
    pub fn addr(&self) -> SocketAddr { self.addr }
    pub fn base_url(&self) -> String { format!("http://{}", self.addr) }
    pub fn events(&self) -> Vec<serde_json::Value> { vec![] }
    pub async fn shutdown(self) {}
    pub fn fail_after(&self, _n: u64) {}
}
pub async fn start(addr: SocketAddr, _config: SandboxConfig) -> std::io::Result<SandboxHandle> { Ok(SandboxHandle { addr }) }
pub async fn serve(_addr: SocketAddr, _config: SandboxConfig, _shutdown: tokio_util::sync::CancellationToken) -> std::io::Result<()> { Ok(()) }
