//! The connection handshake: preamble, hellos, optional mutual HMAC proof,
//! admission (the byte layout is in the module doc of [`peer`](super)).
//!
//! Both functions here run under the caller's handshake deadline; they never
//! wait on their own. Until the handshake is done the codec accepts bodies of
//! at most [`HANDSHAKE_MAX_FRAME`] bytes, so a stranger cannot make a node
//! buffer megabytes before it has proven anything.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::frame::{
    preamble, Frame, Hello, PeerCodec, HANDSHAKE_MAX_FRAME, MAGIC, NONCE_LEN, PREAMBLE_LEN,
    PROOF_LEN, PROTOCOL_VERSION,
};
use super::{PeerConfig, PeerInfo};
use crate::error::Error;

/// The label mixed into every proof, so a MAC made for this protocol version
/// can never be replayed as something else.
const PROOF_LABEL: &[u8] = b"ringkv-peer-proof-v1";

/// A shared cluster secret, pre-keyed for HMAC-SHA256.
///
/// `Debug` never prints the secret.
#[derive(Clone)]
pub struct ClusterSecret {
    keyed: Hmac<Sha256>,
}

impl ClusterSecret {
    /// Keys HMAC-SHA256 with `secret`. An empty secret is refused: it would
    /// look like authentication while proving nothing.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, Error> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(Error::invalid("cluster secret must not be empty"));
        }
        let keyed = Hmac::<Sha256>::new_from_slice(secret)
            .map_err(|e| Error::invalid(format!("cluster secret: {e}")))?;
        Ok(ClusterSecret { keyed })
    }

    /// The proof that the sender in `role` knows the secret, bound to both
    /// nonces of this connection, the sender's node id and the cluster name.
    fn proof(&self, transcript: &Transcript<'_>, role: Role) -> [u8; PROOF_LEN] {
        let mut mac = self.keyed.clone();
        transcript.feed(&mut mac, role);
        mac.finalize().into_bytes().into()
    }

    /// Checks a proof in constant time.
    fn verify(&self, transcript: &Transcript<'_>, role: Role, proof: &[u8; PROOF_LEN]) -> bool {
        let mut mac = self.keyed.clone();
        transcript.feed(&mut mac, role);
        mac.verify_slice(proof).is_ok()
    }
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Which end of the connection produced a proof. Binding the role into the MAC
/// stops a reflection attack: a proof the acceptor computes can never be
/// played back to it as a dialer's proof on another connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Dialer = b'D' as isize,
    Acceptor = b'A' as isize,
}

/// What both proofs cover.
struct Transcript<'a> {
    dialer_nonce: &'a [u8; NONCE_LEN],
    acceptor_nonce: &'a [u8; NONCE_LEN],
    dialer_id: &'a str,
    acceptor_id: &'a str,
    cluster: &'a str,
}

impl Transcript<'_> {
    fn feed(&self, mac: &mut Hmac<Sha256>, role: Role) {
        let sender_id = match role {
            Role::Dialer => self.dialer_id,
            Role::Acceptor => self.acceptor_id,
        };
        mac.update(PROOF_LABEL);
        mac.update(&[role as u8]);
        mac.update(self.dialer_nonce);
        mac.update(self.acceptor_nonce);
        // Lengths fit a byte: names were validated against MAX_NAME_LEN.
        mac.update(&[sender_id.len() as u8]);
        mac.update(sender_id.as_bytes());
        mac.update(&[self.cluster.len() as u8]);
        mac.update(self.cluster.as_bytes());
    }
}

/// Why a handshake failed. Every variant is logged with the peer's address.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed during the handshake")]
    Eof,
    #[error("bad magic {0:02x?} (not a ringkv peer)")]
    BadMagic([u8; 4]),
    #[error("protocol version {theirs}, this node speaks {PROTOCOL_VERSION}")]
    Version { theirs: u8 },
    #[error("expected {expected}, got a {got:?} frame")]
    Unexpected {
        expected: &'static str,
        got: super::frame::FrameKind,
    },
    #[error("peer is in cluster {theirs:?}, this node in {ours:?}")]
    ClusterMismatch { ours: String, theirs: String },
    #[error("peer has no cluster secret but this node requires one")]
    MissingSecret,
    #[error("peer offers a cluster secret but this node has none")]
    UnexpectedSecret,
    #[error("wrong cluster secret (proof did not verify)")]
    BadProof,
    #[error("refused by peer: {0}")]
    Refused(String),
}

/// A connection that finished its handshake.
pub(crate) struct Established {
    pub framed: Framed<TcpStream, PeerCodec>,
    pub peer: PeerInfo,
}

fn our_hello(config: &PeerConfig) -> Hello {
    Hello {
        node_id: config.node_id.clone(),
        cluster: config.cluster_name.clone(),
        wants_auth: config.secret.is_some(),
        nonce: rand::random(),
    }
}

async fn next_frame(framed: &mut Framed<TcpStream, PeerCodec>) -> Result<Frame, HandshakeError> {
    match framed.next().await {
        Some(frame) => Ok(frame?),
        None => Err(HandshakeError::Eof),
    }
}

/// Reads and checks the other side's preamble from the raw stream (before any
/// codec buffering, so no frame bytes are consumed).
async fn read_preamble(stream: &mut TcpStream) -> Result<(), HandshakeError> {
    let mut buf = [0u8; PREAMBLE_LEN];
    stream.read_exact(&mut buf).await.map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            HandshakeError::Eof
        } else {
            HandshakeError::Io(e)
        }
    })?;
    let [a, b, c, d, version] = buf;
    if [a, b, c, d] != MAGIC {
        return Err(HandshakeError::BadMagic([a, b, c, d]));
    }
    if version != PROTOCOL_VERSION {
        return Err(HandshakeError::Version { theirs: version });
    }
    Ok(())
}

/// Checks what both ends must agree on; `None` when they do.
fn check_hello(config: &PeerConfig, theirs: &Hello) -> Option<HandshakeError> {
    if theirs.cluster != config.cluster_name {
        return Some(HandshakeError::ClusterMismatch {
            ours: config.cluster_name.clone(),
            theirs: theirs.cluster.clone(),
        });
    }
    match (config.secret.is_some(), theirs.wants_auth) {
        (true, false) => Some(HandshakeError::MissingSecret),
        (false, true) => Some(HandshakeError::UnexpectedSecret),
        _ => None,
    }
}

/// Runs the dialer's half on a freshly connected stream.
pub(crate) async fn dial(
    stream: TcpStream,
    config: &PeerConfig,
    addr: SocketAddr,
) -> Result<Established, HandshakeError> {
    let ours = our_hello(config);
    let mut framed = Framed::new(stream, PeerCodec::new(HANDSHAKE_MAX_FRAME));
    // Preamble and hello leave in one write.
    framed.write_buffer_mut().extend_from_slice(&preamble());
    framed.send(Frame::Hello(ours.clone())).await?;

    read_preamble(framed.get_mut()).await?;
    let theirs = match next_frame(&mut framed).await? {
        Frame::Hello(hello) => hello,
        Frame::Refuse(reason) => return Err(HandshakeError::Refused(reason)),
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "hello",
                got: other.kind(),
            })
        }
    };
    if let Some(err) = check_hello(config, &theirs) {
        return Err(err);
    }
    if let Some(secret) = &config.secret {
        let transcript = Transcript {
            dialer_nonce: &ours.nonce,
            acceptor_nonce: &theirs.nonce,
            dialer_id: &ours.node_id,
            acceptor_id: &theirs.node_id,
            cluster: &config.cluster_name,
        };
        match next_frame(&mut framed).await? {
            Frame::Proof(proof) if secret.verify(&transcript, Role::Acceptor, &proof) => {}
            Frame::Proof(_) => {
                // Tell the acceptor, so its log says why rather than "closed".
                let err = HandshakeError::BadProof;
                let _ = framed.send(Frame::Refuse(err.to_string())).await;
                return Err(err);
            }
            Frame::Refuse(reason) => return Err(HandshakeError::Refused(reason)),
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "proof",
                    got: other.kind(),
                })
            }
        }
        framed
            .send(Frame::Proof(secret.proof(&transcript, Role::Dialer)))
            .await?;
    }
    match next_frame(&mut framed).await? {
        Frame::Ready => {}
        Frame::Refuse(reason) => return Err(HandshakeError::Refused(reason)),
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "ready",
                got: other.kind(),
            })
        }
    }
    framed.codec_mut().set_max_frame(config.max_frame_bytes);
    Ok(Established {
        framed,
        peer: PeerInfo {
            node_id: theirs.node_id,
            addr,
            authenticated: config.secret.is_some(),
        },
    })
}

/// Runs the acceptor's half on a freshly accepted stream. On a refusal the
/// dialer is told why (best effort) before the error is returned.
pub(crate) async fn accept(
    mut stream: TcpStream,
    config: &PeerConfig,
    addr: SocketAddr,
) -> Result<Established, HandshakeError> {
    if let Err(err) = read_preamble(&mut stream).await {
        if matches!(err, HandshakeError::Version { .. }) {
            // Tell a ringkv of another version which one we speak, so its log
            // names both; then close.
            let _ = stream.write_all(&preamble()).await;
        }
        return Err(err);
    }
    let mut framed = Framed::new(stream, PeerCodec::new(HANDSHAKE_MAX_FRAME));
    // Every frame we send is preceded by our preamble, whatever happens next.
    framed.write_buffer_mut().extend_from_slice(&preamble());

    let theirs = match next_frame(&mut framed).await? {
        Frame::Hello(hello) => hello,
        other => {
            return Err(HandshakeError::Unexpected {
                expected: "hello",
                got: other.kind(),
            })
        }
    };
    if let Some(err) = check_hello(config, &theirs) {
        let _ = framed.send(Frame::Refuse(err.to_string())).await;
        return Err(err);
    }
    let ours = our_hello(config);
    framed.feed(Frame::Hello(ours.clone())).await?;
    if let Some(secret) = &config.secret {
        let transcript = Transcript {
            dialer_nonce: &theirs.nonce,
            acceptor_nonce: &ours.nonce,
            dialer_id: &theirs.node_id,
            acceptor_id: &ours.node_id,
            cluster: &config.cluster_name,
        };
        framed
            .send(Frame::Proof(secret.proof(&transcript, Role::Acceptor)))
            .await?;
        match next_frame(&mut framed).await? {
            Frame::Proof(proof) if secret.verify(&transcript, Role::Dialer, &proof) => {}
            Frame::Proof(_) => {
                let err = HandshakeError::BadProof;
                let _ = framed.send(Frame::Refuse(err.to_string())).await;
                return Err(err);
            }
            Frame::Refuse(reason) => return Err(HandshakeError::Refused(reason)),
            other => {
                return Err(HandshakeError::Unexpected {
                    expected: "proof",
                    got: other.kind(),
                })
            }
        }
    }
    framed.send(Frame::Ready).await?;
    framed.codec_mut().set_max_frame(config.max_frame_bytes);
    Ok(Established {
        framed,
        peer: PeerInfo {
            node_id: theirs.node_id,
            addr,
            authenticated: config.secret.is_some(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript<'a>(dn: &'a [u8; 32], an: &'a [u8; 32]) -> Transcript<'a> {
        Transcript {
            dialer_nonce: dn,
            acceptor_nonce: an,
            dialer_id: "a",
            acceptor_id: "b",
            cluster: "c",
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_role_nonces_and_secret() {
        let secret = ClusterSecret::new("s3cret").expect("non-empty");
        let other = ClusterSecret::new("other").expect("non-empty");
        let (dn, an) = ([1u8; 32], [2u8; 32]);
        let t = transcript(&dn, &an);
        let proof = secret.proof(&t, Role::Dialer);
        assert!(secret.verify(&t, Role::Dialer, &proof));
        assert!(!secret.verify(&t, Role::Acceptor, &proof), "role is bound");
        assert!(!other.verify(&t, Role::Dialer, &proof), "secret is bound");
        let fresh = [3u8; 32];
        let t2 = transcript(&dn, &fresh);
        assert!(!secret.verify(&t2, Role::Dialer, &proof), "nonce is bound");
    }

    #[test]
    fn empty_secret_is_refused_and_debug_hides_the_secret() {
        assert!(ClusterSecret::new("").is_err());
        let secret = ClusterSecret::new("hunter2").expect("non-empty");
        assert!(!format!("{secret:?}").contains("hunter2"));
    }
}
