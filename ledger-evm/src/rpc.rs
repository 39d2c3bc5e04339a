//! Ethereum JSON-RPC over HTTP: the dozen methods the anchor needs, sent
//! with the reqwest client already in Cohort's dependency graph.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use alloy_primitives::{Address, B256, U256};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::EvmError;

pub(crate) struct Rpc {
    url: reqwest::Url,
    /// `scheme://host:port` only: what logs and errors show, since a
    /// provider's URL may carry an API key in its path or query.
    shown: String,
    http: reqwest::Client,
    next_id: AtomicU64,
}

/// A JSON-RPC error answer.
#[derive(Debug)]
pub(crate) struct NodeError {
    pub message: String,
    /// Revert data, when the node passed it along.
    pub revert: Option<Vec<u8>>,
}

impl Rpc {
    pub fn new(url: &str) -> Result<Self, EvmError> {
        let bad = |reason: &str| EvmError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("the node's JSON-RPC URL must be http:// or https://"));
        }
        let host = parsed.host_str().ok_or_else(|| bad("no host"))?;
        let shown = match parsed.port() {
            Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
            None => format!("{}://{host}", parsed.scheme()),
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| bad(&e.to_string()))?;
        Ok(Self {
            url: parsed,
            shown,
            http,
            next_id: AtomicU64::new(1),
        })
    }

    /// The URL as logs may show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// One call; a JSON-RPC error answer is `Err(Ok(NodeError))`, a failure
    /// to get any answer `Err(Err(EvmError))`.
    pub async fn request<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<T, Result<NodeError, EvmError>> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let unreachable = |reason: String| EvmError::Unreachable {
            url: self.shown.clone(),
            reason,
        };
        let response = match self.http.post(self.url.clone()).json(&body).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(Err(unreachable("no answer within 30 s".into())));
            }
            Err(e) if e.is_connect() => {
                return Err(Err(unreachable(format!(
                    "connection failed ({}); is the node running, and is --rpc-url right?",
                    root_cause(&e)
                ))));
            }
            Err(e) => return Err(Err(unreachable(root_cause(&e)))),
        };
        let status = response.status();
        let bad = |reason: String| Err(Err(EvmError::BadAnswer { method, reason }));
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) => return Err(Err(unreachable(root_cause(&e)))),
        };
        let answer: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) if !status.is_success() => {
                return bad(format!("HTTP {status}: {}", excerpt(&text)));
            }
            Err(e) => return bad(format!("not JSON ({e}): {}", excerpt(&text))),
        };
        if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message")
                .to_string();
            return Err(Ok(NodeError {
                message,
                revert: revert_data(error),
            }));
        }
        match answer.get("result") {
            Some(result) => serde_json::from_value(result.clone())
                .or_else(|e| bad(format!("{e}: {}", excerpt(&result.to_string())))),
            None => bad(format!("no result: {}", excerpt(&text))),
        }
    }

    /// [`Rpc::request`] where a JSON-RPC error is just an error.
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        params: Value,
    ) -> Result<T, EvmError> {
        self.request(method, params).await.map_err(|e| match e {
            Ok(node) => EvmError::Node {
                url: self.shown.clone(),
                method,
                message: match node.revert {
                    Some(data) => crate::abi::describe_revert(&data),
                    None => node.message,
                },
            },
            Err(e) => e,
        })
    }

    pub async fn chain_id(&self) -> Result<u64, EvmError> {
        let q: String = self.call("eth_chainId", json!([])).await?;
        quantity_u64("eth_chainId", &q)
    }

    pub async fn code(&self, address: Address) -> Result<Vec<u8>, EvmError> {
        let code: String = self
            .call("eth_getCode", json!([address.to_string(), "latest"]))
            .await?;
        hex_bytes("eth_getCode", &code)
    }

    pub async fn balance(&self, address: Address) -> Result<U256, EvmError> {
        let q: String = self
            .call("eth_getBalance", json!([address.to_string(), "latest"]))
            .await?;
        quantity_u256("eth_getBalance", &q)
    }

    pub async fn nonce(&self, address: Address) -> Result<u64, EvmError> {
        let q: String = self
            .call(
                "eth_getTransactionCount",
                json!([address.to_string(), "pending"]),
            )
            .await?;
        quantity_u64("eth_getTransactionCount", &q)
    }

    /// `eth_call` against the latest block; a revert comes back as its data.
    pub async fn eth_call(
        &self,
        to: Address,
        data: &[u8],
    ) -> Result<Result<Vec<u8>, Vec<u8>>, EvmError> {
        let tx = json!({ "to": to.to_string(), "data": format!("0x{}", hex::encode(data)) });
        match self
            .request::<String>("eth_call", json!([tx, "latest"]))
            .await
        {
            Ok(out) => hex_bytes("eth_call", &out).map(Ok),
            Err(Ok(NodeError {
                revert: Some(data), ..
            })) => Ok(Err(data)),
            Err(Ok(node)) => Err(EvmError::Node {
                url: self.shown.clone(),
                method: "eth_call",
                message: node.message,
            }),
            Err(Err(e)) => Err(e),
        }
    }

    /// Gas for a transaction; a revert comes back as its data (or the
    /// node's message when it sends none).
    pub async fn estimate_gas(
        &self,
        from: Address,
        to: Option<Address>,
        data: &[u8],
    ) -> Result<Result<u64, NodeError>, EvmError> {
        let mut tx =
            json!({ "from": from.to_string(), "data": format!("0x{}", hex::encode(data)) });
        if let Some(to) = to {
            tx["to"] = json!(to.to_string());
        }
        match self.request::<String>("eth_estimateGas", json!([tx])).await {
            Ok(q) => quantity_u64("eth_estimateGas", &q).map(Ok),
            Err(Ok(node)) => Ok(Err(node)),
            Err(Err(e)) => Err(e),
        }
    }

    /// The latest block's base fee, `None` before London (no EIP-1559).
    pub async fn base_fee(&self) -> Result<Option<u128>, EvmError> {
        let block: Value = self
            .call("eth_getBlockByNumber", json!(["latest", false]))
            .await?;
        match block.get("baseFeePerGas").and_then(Value::as_str) {
            Some(q) => quantity_u128("eth_getBlockByNumber", q).map(Some),
            None => Ok(None),
        }
    }

    pub async fn gas_price(&self) -> Result<u128, EvmError> {
        let q: String = self.call("eth_gasPrice", json!([])).await?;
        quantity_u128("eth_gasPrice", &q)
    }

    /// The node's suggested priority fee; 1 gwei where the method is missing.
    pub async fn priority_fee(&self) -> Result<u128, EvmError> {
        match self
            .request::<String>("eth_maxPriorityFeePerGas", json!([]))
            .await
        {
            Ok(q) => quantity_u128("eth_maxPriorityFeePerGas", &q),
            Err(Ok(_)) => Ok(1_000_000_000),
            Err(Err(e)) => Err(e),
        }
    }

    pub async fn send_raw(&self, raw: &[u8]) -> Result<B256, EvmError> {
        let hash: String = self
            .call(
                "eth_sendRawTransaction",
                json!([format!("0x{}", hex::encode(raw))]),
            )
            .await?;
        hash_from_hex("eth_sendRawTransaction", &hash)
    }

    pub async fn receipt(&self, tx: B256) -> Result<Option<Receipt>, EvmError> {
        let receipt: Option<Value> = self
            .call("eth_getTransactionReceipt", json!([tx.to_string()]))
            .await?;
        let Some(r) = receipt else {
            return Ok(None);
        };
        const M: &str = "eth_getTransactionReceipt";
        let field = |name: &str| {
            r.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| EvmError::BadAnswer {
                    method: M,
                    reason: format!("the receipt has no `{name}`"),
                })
        };
        Ok(Some(Receipt {
            transaction: tx,
            success: quantity_u64(M, field("status")?)? == 1,
            block: quantity_u64(M, field("blockNumber")?)?,
            gas_used: quantity_u64(M, field("gasUsed")?)?,
            contract_address: match r.get("contractAddress").and_then(Value::as_str) {
                Some(a) => Some(a.parse().map_err(|_| EvmError::BadAnswer {
                    method: M,
                    reason: format!("contractAddress `{a}`"),
                })?),
                None => None,
            },
        }))
    }
}

/// A mined transaction.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub transaction: B256,
    pub success: bool,
    pub block: u64,
    pub gas_used: u64,
    pub contract_address: Option<Address>,
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

fn excerpt(text: &str) -> String {
    let mut s: String = text.chars().take(200).collect();
    if s.len() < text.len() {
        s.push('…');
    }
    s
}

/// Revert data in the forms nodes use: `error.data` as hex, or an object
/// holding it (`error.data.data`, or `error.data.result` in older Ganache).
fn revert_data(error: &Value) -> Option<Vec<u8>> {
    let data = error.get("data")?;
    let text = data
        .as_str()
        .or_else(|| data.get("data").and_then(Value::as_str))
        .or_else(|| data.get("result").and_then(Value::as_str))?;
    let bytes = hex::decode(text.strip_prefix("0x")?).ok()?;
    Some(bytes)
}

fn hex_bytes(method: &'static str, text: &str) -> Result<Vec<u8>, EvmError> {
    text.strip_prefix("0x")
        .and_then(|h| hex::decode(h).ok())
        .ok_or_else(|| EvmError::BadAnswer {
            method,
            reason: format!("`{}` is not 0x-prefixed hex", excerpt(text)),
        })
}

fn hash_from_hex(method: &'static str, text: &str) -> Result<B256, EvmError> {
    let bytes = hex_bytes(method, text)?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map(B256::from)
        .map_err(|_| EvmError::BadAnswer {
            method,
            reason: format!("`{text}` is not a 32-byte hash"),
        })
}

pub(crate) fn quantity_u256(method: &'static str, text: &str) -> Result<U256, EvmError> {
    text.strip_prefix("0x")
        .filter(|h| !h.is_empty() && h.len() <= 64)
        .and_then(|h| U256::from_str_radix(h, 16).ok())
        .ok_or_else(|| EvmError::BadAnswer {
            method,
            reason: format!("`{}` is not a hex quantity", excerpt(text)),
        })
}

pub(crate) fn quantity_u128(method: &'static str, text: &str) -> Result<u128, EvmError> {
    let v = quantity_u256(method, text)?;
    u128::try_from(v).map_err(|_| EvmError::BadAnswer {
        method,
        reason: format!("{v} is out of range"),
    })
}

pub(crate) fn quantity_u64(method: &'static str, text: &str) -> Result<u64, EvmError> {
    let v = quantity_u256(method, text)?;
    u64::try_from(v).map_err(|_| EvmError::BadAnswer {
        method,
        reason: format!("{v} is out of range"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_and_revert_data() {
        assert_eq!(quantity_u64("m", "0x7a69").unwrap(), 31337);
        assert_eq!(quantity_u64("m", "0x0").unwrap(), 0);
        for bad in ["7a69", "0x", "0xzz", "0x10000000000000000"] {
            assert!(quantity_u64("m", bad).is_err(), "{bad}");
        }
        assert_eq!(
            revert_data(&json!({"code": 3, "message": "execution reverted", "data": "0x0102"})),
            Some(vec![1, 2])
        );
        assert_eq!(
            revert_data(&json!({"data": {"message": "revert", "data": "0xff"}})),
            Some(vec![0xff])
        );
        assert_eq!(revert_data(&json!({"message": "nope"})), None);
    }

    #[test]
    fn urls_are_checked_and_shown_without_secrets() {
        let rpc = Rpc::new("https://node.example:8443/v3/SECRETKEY?x=1").unwrap();
        assert_eq!(rpc.shown(), "https://node.example:8443");
        assert!(matches!(
            Rpc::new("ws://127.0.0.1:8545"),
            Err(EvmError::BadUrl { .. })
        ));
        assert!(matches!(
            Rpc::new("127.0.0.1:8545"),
            Err(EvmError::BadUrl { .. })
        ));
    }

    #[tokio::test]
    async fn an_unreachable_node_says_so() {
        // A port nobody listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let rpc = Rpc::new(&format!("http://127.0.0.1:{port}")).unwrap();
        let err = rpc.chain_id().await.unwrap_err();
        assert!(matches!(err, EvmError::Unreachable { .. }), "{err}");
        assert!(err.to_string().contains("is the node running"), "{err}");
    }
}
