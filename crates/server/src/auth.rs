//! JWT (HS256) tokens: minting, and verifying them into [`Claims`].
//!
//! Only HS256 is accepted; the `alg` header is checked, so a token signed with
//! another algorithm (or `none`) is refused. `exp` is required and has no leeway.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use jobstream_rooms::{Claims, Scope};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The secret tokens are signed with.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// A secret from configuration.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// 32 random bytes, for a server started without a configured secret.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = vec![0u8; 32];
        rand::thread_rng().fill_bytes(&mut bytes);
        Self(bytes)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        match HmacSha256::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts every key length"),
        }
    }
}

/// Why a token was refused. The text follows `unauthorized: ` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// Not three base64url parts of JSON, or required claims missing.
    #[error("malformed token")]
    Malformed,
    /// Signed with another algorithm than HS256.
    #[error("unsupported token algorithm (HS256 expected)")]
    Algorithm,
    /// The signature does not match the server's secret.
    #[error("invalid token signature")]
    Signature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    typ: Option<String>,
}

/// The JWT claims of CONTRACT §4.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Who.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Workspace ids, or `["*"]`.
    #[serde(default)]
    pub workspaces: Vec<String>,
    /// Space-separated scopes; absent means `subscribe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl TokenClaims {
    /// What the claims allow.
    pub fn into_claims(self) -> Claims {
        Claims {
            subject: self.sub,
            workspaces: self.workspaces.into_iter().collect(),
            scopes: Claims::parse_scopes(self.scope.as_deref()),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Signs a token for `subject` with `workspaces`, `scopes`, valid for `ttl`.
pub fn mint(secret: &Secret, subject: &str, workspaces: &[String], scopes: &BTreeSet<Scope>, ttl: Duration) -> String {
    let now = now_secs();
    let claims = TokenClaims {
        sub: subject.to_owned(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        workspaces: workspaces.to_vec(),
        scope: Some(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
    };
    let header = Header { alg: "HS256".into(), typ: Some("JWT".into()) };
    let encode = |value: &dyn erased::Json| URL_SAFE_NO_PAD.encode(value.to_json());
    let signing_input = format!("{}.{}", encode(&header), encode(&claims));
    let mut mac = secret.mac();
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

mod erased {
    /// Serialises header and claims through one closure.
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}

/// When a token stops being valid: its `exp`, in seconds since the epoch. A
/// token is valid while the clock is before `exp` (no leeway).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Expiry(u64);

impl Expiry {
    /// The `exp` claim.
    pub fn from_secs(exp: u64) -> Self {
        Self(exp)
    }

    /// The `exp` claim, in seconds since the epoch.
    pub fn secs(self) -> u64 {
        self.0
    }

    /// Whether the token has expired: the rule [`verify`] applies.
    pub fn has_passed(self) -> bool {
        self.0 <= now_secs()
    }

    /// Time left before `exp` (zero once it has passed), at most [`Expiry::FAR`].
    pub fn remaining(self) -> Duration {
        match UNIX_EPOCH.checked_add(Duration::from_secs(self.0)) {
            Some(at) => at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO).min(Self::FAR),
            None => Self::FAR,
        }
    }

    /// The moment of `exp` on the runtime's clock.
    pub fn deadline(self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        now.checked_add(self.remaining()).unwrap_or(now + Duration::from_secs(86_400))
    }

    /// The longest wait computed for an `exp` (a token may claim any year).
    pub const FAR: Duration = Duration::from_secs(100 * 365 * 86_400);
}

/// A verified token: what it allows, and until when.
#[derive(Debug, Clone)]
pub struct Verified {
    /// What the token allows.
    pub claims: Claims,
    /// When it expires.
    pub expires: Expiry,
}

/// Verifies a token's algorithm, signature and expiry, and returns its claims.
pub fn verify(secret: &Secret, token: &str) -> Result<Claims, TokenError> {
    verify_token(secret, token).map(|verified| verified.claims)
}

/// [`verify`], keeping the expiry: long-lived connections end at `exp`.
pub fn verify_token(secret: &Secret, token: &str) -> Result<Verified, TokenError> {
    let token = token.trim();
    let (signing_input, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (header, payload) = signing_input.split_once('.').ok_or(TokenError::Malformed)?;
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| TokenError::Malformed);
    let header: Header = serde_json::from_slice(&decode(header)?).map_err(|_| TokenError::Malformed)?;
    if header.alg != "HS256" {
        return Err(TokenError::Algorithm);
    }
    let mut mac = secret.mac();
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&decode(signature)?).map_err(|_| TokenError::Signature)?;
    let claims: TokenClaims = serde_json::from_slice(&decode(payload)?).map_err(|_| TokenError::Malformed)?;
    let expires = Expiry(claims.exp);
    if expires.has_passed() {
        return Err(TokenError::Expired);
    }
    Ok(Verified { claims: claims.into_claims(), expires })
}

/// Parses a duration like `90`, `90s`, `30m`, `24h` or `7d`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("invalid duration {text:?}: use e.g. 90s, 30m, 24h or 7d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("invalid duration unit in {text:?}: use s, m, h or d")),
    };
    if secs == 0 {
        return Err("the duration must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scopes(s: &str) -> BTreeSet<Scope> {
        Claims::parse_scopes(Some(s))
    }

    #[test]
    fn a_minted_token_verifies_into_its_claims() {
        let secret = Secret::new("s3cret");
        let token = mint(&secret, "svc", &["ws-1".into()], &scopes("subscribe publish"), Duration::from_secs(60));
        let claims = verify(&secret, &token).ok();
        assert_eq!(claims.as_ref().map(|c| c.subject.as_str()), Some("svc"));
        assert_eq!(claims.map(|c| c.scopes), Some(scopes("publish subscribe")));
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = mint(&Secret::new("a"), "svc", &[], &scopes("subscribe"), Duration::from_secs(60));
        assert_eq!(verify(&Secret::new("b"), &token).err(), Some(TokenError::Signature));
    }

    #[test]
    fn a_known_hs256_token_from_another_implementation_verifies() {
        // Made with Python's hmac: header {"alg":"HS256","typ":"JWT"},
        // claims {"sub":"u","exp":4102444800,"workspaces":["w"]}, secret "secret".
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwLCJ3b3Jrc3BhY2VzIjpbInciXX0.fN4v4HCbZOx-_KO_OoVZY9fb87BnnIuF5H5z0MANeAc";
        let claims = verify(&Secret::new("secret"), token);
        assert_eq!(claims.map(|c| c.workspaces.into_iter().collect::<Vec<_>>()), Ok(vec!["w".to_owned()]));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let secret = Secret::new("s");
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256"}"#);
        let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"u","exp":1000}"#);
        let input = format!("{header}.{claims}");
        let mut mac = secret.mac();
        mac.update(input.as_bytes());
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()));
        assert_eq!(verify(&secret, &token).err(), Some(TokenError::Expired));
    }

    #[test]
    fn malformed_and_none_algorithm_tokens_are_refused() {
        let secret = Secret::new("s");
        assert_eq!(verify(&secret, "abc").err(), Some(TokenError::Malformed));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(br#"{"sub":"u","exp":9999999999}"#)
        );
        assert_eq!(verify(&secret, &none).err(), Some(TokenError::Algorithm));
    }

    #[test]
    fn the_expiry_is_kept_and_passes_at_exp() {
        let secret = Secret::new("s");
        let token = mint(&secret, "svc", &[], &scopes("subscribe"), Duration::from_secs(60));
        let verified = verify_token(&secret, &token).ok();
        let expires = verified.map(|v| v.expires);
        assert_eq!(expires.map(|e| e.secs().saturating_sub(now_secs())), Some(60));
        assert_eq!(expires.map(Expiry::has_passed), Some(false));
        assert!(expires.is_some_and(|e| e.remaining() > Duration::from_secs(58)));
        let past = Expiry::from_secs(now_secs());
        assert!(past.has_passed());
        assert_eq!(past.remaining(), Duration::ZERO);
        // Any `exp` a token can carry gives a deadline, without overflow.
        assert_eq!(Expiry::from_secs(u64::MAX).remaining(), Expiry::FAR);
        assert!(Expiry::from_secs(u64::MAX).deadline() > tokio::time::Instant::now());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("90"), Ok(Duration::from_secs(90)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0s").is_err());
    }
}
