//! JWT tokens: verifying them into [`Claims`] (CONTRACT §4), and minting
//! HS256 ones, on the `jsonwebtoken` crate.
//!
//! Every key has one algorithm, fixed by the configuration and never taken
//! from a token: the HMAC secrets (`JOBSTREAM_JWT_SECRET`, and
//! `JOBSTREAM_JWT_SECRET_PREVIOUS` during a rotation) verify HS256; a PEM
//! public key verifies the algorithm of its type (or `JOBSTREAM_JWT_ALGORITHM`);
//! each key of a JWKS file the algorithm of its `alg`, else of its `kty` and
//! `crv`. A token's `alg` (and `kid`) only choose among those keys, so
//! `alg: none`, another HMAC size, and a token signed with HMAC over a public
//! key's bytes find no key to verify with.
//!
//! The rules, for every token:
//! - `exp` is required and has no leeway: a token is valid while the clock is
//!   before `exp` ([`Expiry::has_passed`]);
//! - `nbf`, when present, must not be in the future;
//! - a `crit` header is refused: no JWS extension is supported
//!   (RFC 7515 §4.1.11 asks a verifier to refuse the extensions it does not
//!   understand);
//! - with an issuer or audiences configured, `iss` must be that issuer and
//!   `aud` name one of the audiences; both are then required;
//! - `sub` is required; `nbf`, `exp` and `iat` must be integers.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jobstream_rooms::{Claims, Scope};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// An HMAC secret (HS256). Its `Debug` shows nothing of it.
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
}

/// Why a token was refused. The text follows `unauthorized: ` on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No token was given.
    #[error("missing token")]
    Missing,
    /// Not three base64url parts of JSON, or a required claim missing or of the wrong type.
    #[error("malformed token")]
    Malformed,
    /// No configured key verifies the token's `alg` (`none`, another HMAC size, HS256 without a secret…).
    #[error("unsupported token algorithm")]
    Algorithm,
    /// The token names a `kid` that no key of its algorithm has.
    #[error("unknown token key id (kid)")]
    UnknownKey,
    /// The token's header has a `crit` parameter: no extension is supported.
    #[error("unsupported critical header parameter (crit)")]
    Critical,
    /// The signature does not match any key of the token's algorithm.
    #[error("invalid token signature")]
    Signature,
    /// `exp` is not in the future.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid (nbf)")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("wrong token issuer (iss)")]
    Issuer,
    /// `aud` is missing or names none of the configured audiences.
    #[error("wrong token audience (aud)")]
    Audience,
}

/// The JWT claims of CONTRACT §4.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenClaims {
    /// Who.
    pub sub: String,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// Not before, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issued at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Issuer (checked by `jsonwebtoken` when one is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<Value>,
    /// Audience: a string or an array (checked when audiences are configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Value>,
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

/// A token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("cannot sign the token: {0}")]
pub struct MintError(String);

/// Mints HS256 tokens with one secret, carrying the configured `iss` and `aud`
/// (so that they pass the same checks as every other token).
#[derive(Clone)]
pub struct Signer {
    secret: Secret,
    issuer: Option<String>,
    audience: Vec<String>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("secret", &self.secret)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Signer {
    /// Signs with `secret`, without `iss` or `aud`.
    pub fn new(secret: Secret) -> Self {
        Self { secret, issuer: None, audience: Vec::new() }
    }

    /// Adds `iss` (when given) and `aud` (when not empty: a string for one
    /// audience, else an array) to the tokens.
    pub fn with_claims(mut self, issuer: Option<String>, audience: Vec<String>) -> Self {
        self.issuer = issuer;
        self.audience = audience;
        self
    }

    /// Signs a token for `subject` with `workspaces`, `scopes`, valid for `ttl`.
    pub fn mint(
        &self,
        subject: &str,
        workspaces: &[String],
        scopes: &BTreeSet<Scope>,
        ttl: Duration,
    ) -> Result<String, MintError> {
        let now = now_secs();
        let aud = match self.audience.as_slice() {
            [] => None,
            [one] => Some(Value::from(one.as_str())),
            many => Some(Value::from(many.to_vec())),
        };
        let claims = TokenClaims {
            sub: subject.to_owned(),
            exp: now.saturating_add(ttl.as_secs()),
            nbf: None,
            iat: Some(now),
            iss: self.issuer.clone().map(Value::String),
            aud,
            workspaces: workspaces.to_vec(),
            scope: Some(scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(&self.secret.0))
            .map_err(|err| MintError(err.to_string()))
    }
}

/// Signs an HS256 token with `secret` alone (no `iss` or `aud`).
pub fn mint(
    secret: &Secret,
    subject: &str,
    workspaces: &[String],
    scopes: &BTreeSet<Scope>,
    ttl: Duration,
) -> Result<String, MintError> {
    Signer::new(secret.clone()).mint(subject, workspaces, scopes, ttl)
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

/// Token settings besides the current secret (`JOBSTREAM_JWT_SECRET`). Its
/// `Debug` leaves the previous secret out.
#[derive(Clone, Default)]
pub struct KeySettings {
    /// `JOBSTREAM_JWT_SECRET_PREVIOUS`: also verifies HS256 tokens, during a rotation.
    pub previous_secret: Option<String>,
    /// `JOBSTREAM_JWT_PUBLIC_KEY_FILE`: a PEM public key (RSA, EC P-256 or P-384, Ed25519).
    pub public_key_file: Option<PathBuf>,
    /// `JOBSTREAM_JWT_ALGORITHM`: the algorithm of that key; by default from its type.
    pub algorithm: Option<String>,
    /// `JOBSTREAM_JWT_JWKS_FILE`: a JWKS document, keys chosen by `kid`.
    pub jwks_file: Option<PathBuf>,
    /// `JOBSTREAM_JWT_ISSUER`: the `iss` every token must carry.
    pub issuer: Option<String>,
    /// `JOBSTREAM_JWT_AUDIENCE`: every token's `aud` must name one of these.
    pub audience: Vec<String>,
}

impl std::fmt::Debug for KeySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySettings")
            .field("previous_secret", &self.previous_secret.as_ref().map(|_| "(set)"))
            .field("public_key_file", &self.public_key_file)
            .field("algorithm", &self.algorithm)
            .field("jwks_file", &self.jwks_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

/// The token settings cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Everything that verifies tokens. Cheap to clone. Its `Debug` names the
/// keys' algorithms and ids, never a secret.
#[derive(Clone)]
pub struct Keys(Arc<KeySet>);

struct KeySet {
    /// HS256 secrets: the current one (which mints) first, then the previous one.
    secrets: Vec<HmacKey>,
    /// The checks of HS256 tokens.
    hmac_validation: Validation,
    /// Public keys, each with its one algorithm.
    public: Vec<PublicKey>,
    /// Whether the only secret was made up at start.
    random: bool,
    issuer: Option<String>,
    audience: Vec<String>,
}

struct HmacKey {
    secret: Secret,
    key: DecodingKey,
}

struct PublicKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    /// Where it came from, for `Debug` and logs.
    origin: String,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = &self.0;
        let public = set
            .public
            .iter()
            .map(|k| match &k.kid {
                Some(kid) => format!("{:?} kid {kid:?} ({})", k.algorithm, k.origin),
                None => format!("{:?} ({})", k.algorithm, k.origin),
            })
            .collect::<Vec<_>>();
        f.debug_struct("Keys")
            .field("hs256_secrets", &set.secrets.len())
            .field("random_secret", &set.random)
            .field("public_keys", &public)
            .field("issuer", &set.issuer)
            .field("audience", &set.audience)
            .finish()
    }
}

/// The checks of one algorithm: `exp` (no leeway) and `sub` required, `nbf`
/// checked when present, `iss` and `aud` required and checked when configured.
fn validation(algorithm: Algorithm, issuer: Option<&str>, audience: &[String]) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = 0;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    let mut required = vec!["exp", "sub"];
    if let Some(issuer) = issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    if audience.is_empty() {
        // Without configured audiences `aud` is not looked at (jsonwebtoken
        // would otherwise refuse every token that has one).
        validation.validate_aud = false;
    } else {
        validation.set_audience(audience);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    validation
}

impl Keys {
    /// The keys of the configuration. Without `secret` and without public keys,
    /// a random secret is made (tokens then die with the process); with public
    /// keys and no `secret`, HS256 tokens are refused.
    pub fn load(secret: Option<&str>, settings: &KeySettings) -> Result<Self, KeyError> {
        let issuer = settings.issuer.as_deref().map(str::trim).filter(|i| !i.is_empty());
        let audience: Vec<String> =
            settings.audience.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        let mut public = Vec::new();
        match (&settings.public_key_file, settings.algorithm.as_deref().map(str::trim).filter(|a| !a.is_empty())) {
            (Some(path), algorithm) => public.push(load_pem(path, algorithm)?),
            (None, Some(_)) => {
                return Err(KeyError(
                    "JOBSTREAM_JWT_ALGORITHM is the algorithm of JOBSTREAM_JWT_PUBLIC_KEY_FILE, which is not set"
                        .into(),
                ))
            }
            (None, None) => {}
        }
        if let Some(path) = &settings.jwks_file {
            public.extend(load_jwks(path)?);
        }
        for key in &mut public {
            key.validation = validation(key.algorithm, issuer, &audience);
        }
        let secret = secret.filter(|s| !s.is_empty());
        let previous = settings.previous_secret.as_deref().filter(|s| !s.is_empty());
        let (secrets, random) = match (secret, previous) {
            (Some(current), previous) => {
                (std::iter::once(current).chain(previous).map(|s| Secret::new(s.as_bytes())).collect(), false)
            }
            (None, Some(_)) => {
                return Err(KeyError(
                    "JOBSTREAM_JWT_SECRET_PREVIOUS is set without JOBSTREAM_JWT_SECRET: set the current secret too (new tokens are signed with it)".into(),
                ))
            }
            (None, None) if public.is_empty() => (vec![Secret::random()], true),
            (None, None) => (Vec::new(), false),
        };
        let secrets =
            secrets.into_iter().map(|secret| HmacKey { key: DecodingKey::from_secret(&secret.0), secret }).collect();
        Ok(Self(Arc::new(KeySet {
            secrets,
            hmac_validation: validation(Algorithm::HS256, issuer, &audience),
            public,
            random,
            issuer: issuer.map(str::to_owned),
            audience,
        })))
    }

    /// Keys of one secret and nothing else (tests, tools).
    pub fn from_secret(secret: &str) -> Self {
        match Self::load(Some(secret), &KeySettings::default()) {
            Ok(keys) => keys,
            Err(_) => unreachable!("a secret alone is always a valid configuration"),
        }
    }

    /// Whether the secret was made up at start (no `JOBSTREAM_JWT_SECRET` and no public key).
    pub fn has_random_secret(&self) -> bool {
        self.0.random
    }

    /// Mints with the current secret and the configured `iss` and `aud`; `None`
    /// without an HMAC secret (only public keys: tokens come from their issuer).
    pub fn signer(&self) -> Option<Signer> {
        let current = self.0.secrets.first()?;
        Some(Signer::new(current.secret.clone()).with_claims(self.0.issuer.clone(), self.0.audience.clone()))
    }
}

/// Reads a PEM public key and gives it its one algorithm.
fn load_pem(path: &Path, algorithm: Option<&str>) -> Result<PublicKey, KeyError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|err| KeyError(format!("cannot read JOBSTREAM_JWT_PUBLIC_KEY_FILE {shown}: {err}")))?;
    let labels: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("-----BEGIN "))
        .map(|label| label.trim_end_matches('-').trim())
        .collect();
    match labels.as_slice() {
        ["PUBLIC KEY" | "RSA PUBLIC KEY"] => {}
        [] => return Err(KeyError(format!("{shown} is not a PEM file (-----BEGIN PUBLIC KEY-----)"))),
        [label] => {
            return Err(KeyError(format!(
                "{shown} holds a {label}, not a public key: give the public key alone (`openssl pkey -in FILE -pubout`)"
            )))
        }
        _ => {
            return Err(KeyError(format!(
                "{shown} holds several PEM blocks: give one public key, or several keys as a JWKS file (JOBSTREAM_JWT_JWKS_FILE)"
            )))
        }
    }
    let bytes = text.as_bytes();
    let key = DecodingKey::from_rsa_pem(bytes)
        .or_else(|_| DecodingKey::from_ec_pem(bytes))
        .or_else(|_| DecodingKey::from_ed_pem(bytes))
        .map_err(|_| KeyError(format!("{shown} is not an RSA, EC or Ed25519 public key")))?;
    let natural = match key.family() {
        AlgorithmFamily::Ec => {
            // The SEC1 point: 0x04 ‖ x ‖ y, or a compressed x.
            let len = match key.kind() {
                DecodingKeyKind::SecretOrDer(point) => point.len(),
                DecodingKeyKind::RsaModulusExponent { .. } => 0,
            };
            match len {
                65 | 33 => Algorithm::ES256,
                97 | 49 => Algorithm::ES384,
                _ => {
                    return Err(KeyError(format!(
                        "{shown}: only the EC curves P-256 (ES256) and P-384 (ES384) are supported"
                    )))
                }
            }
        }
        AlgorithmFamily::Ed => Algorithm::EdDSA,
        AlgorithmFamily::Rsa | AlgorithmFamily::Hmac => Algorithm::RS256,
    };
    let algorithm = match algorithm {
        None => natural,
        Some(name) => {
            let chosen = parse_algorithm(name).ok_or_else(|| {
                KeyError(format!(
                    "JOBSTREAM_JWT_ALGORITHM {name:?} is not one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                ))
            })?;
            let fits = match key.family() {
                AlgorithmFamily::Rsa => chosen.family() == AlgorithmFamily::Rsa,
                _ => chosen == natural,
            };
            if !fits {
                return Err(KeyError(format!(
                    "JOBSTREAM_JWT_ALGORITHM {chosen:?} does not fit the key in {shown} (a {natural:?} key)"
                )));
            }
            chosen
        }
    };
    Ok(PublicKey {
        kid: None,
        algorithm,
        key,
        validation: Validation::new(algorithm),
        origin: format!("public key file {shown}"),
    })
}

/// An asymmetric algorithm by name (case-insensitive); never an HMAC one.
fn parse_algorithm(name: &str) -> Option<Algorithm> {
    const NAMES: [(&str, Algorithm); 9] = [
        ("RS256", Algorithm::RS256),
        ("RS384", Algorithm::RS384),
        ("RS512", Algorithm::RS512),
        ("PS256", Algorithm::PS256),
        ("PS384", Algorithm::PS384),
        ("PS512", Algorithm::PS512),
        ("ES256", Algorithm::ES256),
        ("ES384", Algorithm::ES384),
        ("EdDSA", Algorithm::EdDSA),
    ];
    NAMES.iter().find(|(known, _)| known.eq_ignore_ascii_case(name.trim())).map(|(_, alg)| *alg)
}

/// Reads a JWKS file. Keys this server cannot use (encryption keys, symmetric
/// keys, other curves, an `alg` that does not fit the key) are skipped with a
/// warning; a file without a usable key is refused.
fn load_jwks(path: &Path) -> Result<Vec<PublicKey>, KeyError> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<Value>,
    }
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|err| KeyError(format!("cannot read JOBSTREAM_JWT_JWKS_FILE {shown}: {err}")))?;
    let set: JwkSet = serde_json::from_str(&text)
        .map_err(|err| KeyError(format!("{shown} is not a JWKS document ({{\"keys\": [...]}}): {err}")))?;
    let mut keys = Vec::new();
    for (index, entry) in set.keys.iter().enumerate() {
        let name = match entry.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("kid {kid:?}"),
            None => format!("keys[{index}]"),
        };
        match jwk_key(entry) {
            Ok(mut key) => {
                key.origin = format!("JWKS file {shown}");
                keys.push(key);
            }
            Err(reason) => tracing::warn!(file = %shown, key = %name, "JWKS key skipped: {reason}"),
        }
    }
    if keys.is_empty() {
        return Err(KeyError(format!("{shown} has no key this server can verify tokens with")));
    }
    Ok(keys)
}

/// One JWKS key with its algorithm: its `alg`, else the one of its `kty`/`crv`.
fn jwk_key(entry: &Value) -> Result<PublicKey, String> {
    let jwk: Jwk = serde_json::from_value(entry.clone()).map_err(|_| "not a supported JWK".to_owned())?;
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return Err("an encryption key (use: enc)".into());
    }
    let (natural, fits): (Algorithm, fn(Algorithm) -> bool) = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => (Algorithm::RS256, |alg| alg.family() == AlgorithmFamily::Rsa),
        AlgorithmParameters::EllipticCurve(params) => match params.curve {
            EllipticCurve::P256 => (Algorithm::ES256, |alg| alg == Algorithm::ES256),
            EllipticCurve::P384 => (Algorithm::ES384, |alg| alg == Algorithm::ES384),
            _ => return Err("an EC key on a curve other than P-256 or P-384".into()),
        },
        AlgorithmParameters::OctetKeyPair(params) if params.curve == EllipticCurve::Ed25519 => {
            (Algorithm::EdDSA, |alg| alg == Algorithm::EdDSA)
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("an OKP key that is not Ed25519".into()),
        AlgorithmParameters::OctetKey(_) => {
            return Err("a symmetric (oct) key: HMAC secrets come from JOBSTREAM_JWT_SECRET".into())
        }
    };
    let algorithm = match jwk.common.key_algorithm {
        None => natural,
        Some(declared) => match parse_algorithm(&declared.to_string()).filter(|alg| fits(*alg)) {
            Some(alg) => alg,
            None => return Err(format!("its alg {declared} does not fit its kty/crv")),
        },
    };
    let key = DecodingKey::from_jwk(&jwk).map_err(|err| format!("unusable key material: {err}"))?;
    Ok(PublicKey {
        kid: jwk.common.key_id.clone(),
        algorithm,
        key,
        validation: Validation::new(algorithm),
        origin: String::new(),
    })
}

/// What the verifier reads from a token's header before choosing a key.
struct TokenHeader {
    alg: String,
    kid: Option<String>,
}

/// Decodes the header: three parts, a JSON object, no `crit`, a string `alg`.
fn read_header(token: &str) -> Result<TokenHeader, TokenError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::Malformed)?;
    let fields: serde_json::Map<String, Value> = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    if fields.contains_key("crit") {
        return Err(TokenError::Critical);
    }
    let alg = fields.get("alg").and_then(Value::as_str).ok_or(TokenError::Malformed)?.to_owned();
    let kid = match fields.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(TokenError::Malformed),
    };
    Ok(TokenHeader { alg, kid })
}

/// Our refusal for a `jsonwebtoken` error.
fn refusal(err: &jsonwebtoken::errors::Error) -> TokenError {
    match err.kind() {
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => TokenError::Signature,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => TokenError::Issuer,
        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => TokenError::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName => {
            TokenError::Algorithm
        }
        _ => TokenError::Malformed,
    }
}

/// The claims of the first key whose signature matches. The claims are
/// checked only after a signature matched, so any other refusal is final.
fn first_verified<'a>(
    token: &str,
    candidates: impl Iterator<Item = (&'a DecodingKey, &'a Validation)>,
) -> Result<TokenClaims, TokenError> {
    for (key, validation) in candidates {
        match jsonwebtoken::decode::<TokenClaims>(token, key, validation) {
            Ok(data) => return Ok(data.claims),
            Err(err) => match refusal(&err) {
                TokenError::Signature => continue,
                other => return Err(other),
            },
        }
    }
    Err(TokenError::Signature)
}

/// A token as written where only a token goes (Socket.IO's `auth.token`,
/// `?token=`): trimmed, without a leading `Bearer ` (any case), which people
/// copy from the `Authorization` header.
pub fn without_bearer(token: &str) -> &str {
    let token = token.trim();
    match token.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        // `Bearer` and nothing after it: no token.
        None if token.eq_ignore_ascii_case("bearer") => "",
        _ => token,
    }
}

/// Verifies a token (header, key, signature, claims) and returns its claims.
pub fn verify(keys: &Keys, token: &str) -> Result<Claims, TokenError> {
    verify_token(keys, token).map(|verified| verified.claims)
}

/// [`verify`], keeping the expiry: long-lived connections end at `exp`.
pub fn verify_token(keys: &Keys, token: &str) -> Result<Verified, TokenError> {
    let token = token.trim();
    let header = read_header(token)?;
    let algorithm: Algorithm = header.alg.parse().map_err(|_| TokenError::Algorithm)?;
    let set = &keys.0;
    let claims = if algorithm == Algorithm::HS256 && !set.secrets.is_empty() {
        first_verified(token, set.secrets.iter().map(|s| (&s.key, &set.hmac_validation)))?
    } else {
        let mut of_algorithm = set.public.iter().filter(|k| k.algorithm == algorithm).peekable();
        if of_algorithm.peek().is_none() {
            return Err(TokenError::Algorithm);
        }
        // A key without a `kid` (the PEM file's) may verify any token of its algorithm.
        let candidates: Vec<&PublicKey> = of_algorithm
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            return Err(TokenError::UnknownKey);
        }
        first_verified(token, candidates.into_iter().map(|k| (&k.key, &k.validation)))?
    };
    // `sub` names who holds the token (limits are counted per subject): it
    // must name someone.
    if claims.sub.trim().is_empty() {
        return Err(TokenError::Malformed);
    }
    // jsonwebtoken accepts a token in its `exp` second; ours ends at `exp`.
    let expires = Expiry(claims.exp);
    if expires.has_passed() {
        return Err(TokenError::Expired);
    }
    Ok(Verified { claims: claims.into_claims(), expires })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bearer_scheme_written_before_a_token_is_left_out() {
        assert_eq!(without_bearer("a.b.c"), "a.b.c");
        assert_eq!(without_bearer(" a.b.c "), "a.b.c");
        assert_eq!(without_bearer("Bearer a.b.c"), "a.b.c");
        assert_eq!(without_bearer("bearer   a.b.c"), "a.b.c");
        assert_eq!(without_bearer("Basic a.b.c"), "Basic a.b.c");
        assert_eq!(without_bearer("Bearer"), "");
        assert_eq!(without_bearer("bearer  "), "");
    }

    const RSA_PRIVATE: &str = include_str!("../tests/keys/test-only-rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/test-only-rsa-public.pem");
    const RSA_OTHER_PRIVATE: &str = include_str!("../tests/keys/test-only-rsa-other-private.pem");
    const EC_PRIVATE: &str = include_str!("../tests/keys/test-only-ec-p256-private.pem");

    fn key_file(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
    }

    fn scopes(s: &str) -> BTreeSet<Scope> {
        Claims::parse_scopes(Some(s))
    }

    fn in_an_hour() -> u64 {
        now_secs() + 3600
    }

    /// Claims valid for an hour, with `extra` fields added or replaced.
    fn claims(extra: Value) -> Value {
        let mut claims = json!({ "sub": "u", "exp": in_an_hour(), "workspaces": ["w"], "scope": "subscribe" });
        if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
            claims.extend(extra);
        }
        claims
    }

    fn encode(header: &Header, claims: &Value, key: &EncodingKey) -> String {
        jsonwebtoken::encode(header, claims, key).unwrap_or_default()
    }

    fn hs256(secret: &str, claims: &Value) -> String {
        encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()))
    }

    fn with_kid(algorithm: Algorithm, kid: Option<&str>) -> Header {
        let mut header = Header::new(algorithm);
        header.kid = kid.map(str::to_owned);
        header
    }

    fn rs256(kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes());
        key.map(|key| encode(&with_kid(Algorithm::RS256, kid), claims, &key)).unwrap_or_default()
    }

    fn es256(kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes());
        key.map(|key| encode(&with_kid(Algorithm::ES256, kid), claims, &key)).unwrap_or_default()
    }

    /// A token from a hand-made header and claims, signed with HMAC-SHA256 over `secret`.
    fn raw_hs256(header: &Value, claims: &Value, secret: &[u8]) -> String {
        let part = |value: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap_or_default());
        let input = format!("{}.{}", part(header), part(claims));
        let signature =
            jsonwebtoken::crypto::sign(input.as_bytes(), &EncodingKey::from_secret(secret), Algorithm::HS256);
        format!("{input}.{}", signature.unwrap_or_default())
    }

    fn load(secret: Option<&str>, settings: KeySettings) -> Keys {
        match Keys::load(secret, &settings) {
            Ok(keys) => keys,
            Err(err) => panic!("keys do not load: {err}"),
        }
    }

    fn pem_keys(file: &str) -> Keys {
        load(None, KeySettings { public_key_file: Some(key_file(file)), ..KeySettings::default() })
    }

    fn jwks_keys() -> Keys {
        load(None, KeySettings { jwks_file: Some(key_file("test-only-jwks.json")), ..KeySettings::default() })
    }

    fn subject(result: Result<Claims, TokenError>) -> Result<String, TokenError> {
        result.map(|claims| claims.subject)
    }

    #[test]
    fn a_minted_token_verifies_into_its_claims() {
        let secret = Secret::new("s3cret");
        let token = mint(&secret, "svc", &["ws-1".into()], &scopes("subscribe publish"), Duration::from_secs(60));
        let claims = token.ok().and_then(|token| verify(&Keys::from_secret("s3cret"), &token).ok());
        assert_eq!(claims.as_ref().map(|c| c.subject.as_str()), Some("svc"));
        assert_eq!(claims.map(|c| c.scopes), Some(scopes("publish subscribe")));
    }

    #[test]
    fn a_token_without_a_subject_is_refused() {
        for sub in ["", "   "] {
            let token =
                mint(&Secret::new("s3cret"), sub, &["ws-1".into()], &scopes("subscribe"), Duration::from_secs(60));
            let outcome = token.ok().map(|token| verify(&Keys::from_secret("s3cret"), &token).err());
            assert_eq!(outcome, Some(Some(TokenError::Malformed)), "sub {sub:?}");
        }
    }

    #[test]
    fn a_token_signed_with_another_secret_is_refused() {
        let token = hs256("a", &claims(json!({})));
        assert_eq!(verify(&Keys::from_secret("b"), &token).err(), Some(TokenError::Signature));
    }

    #[test]
    fn a_known_hs256_token_from_another_implementation_verifies() {
        // Made with Python's hmac: header {"alg":"HS256","typ":"JWT"},
        // claims {"sub":"u","exp":4102444800,"workspaces":["w"]}, secret "secret".
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1IiwiZXhwIjo0MTAyNDQ0ODAwLCJ3b3Jrc3BhY2VzIjpbInciXX0.fN4v4HCbZOx-_KO_OoVZY9fb87BnnIuF5H5z0MANeAc";
        let claims = verify(&Keys::from_secret("secret"), token);
        assert_eq!(claims.map(|c| c.workspaces.into_iter().collect::<Vec<_>>()), Ok(vec!["w".to_owned()]));
    }

    #[test]
    fn an_expired_token_is_refused_also_at_exp_exactly() {
        let keys = Keys::from_secret("s");
        assert_eq!(verify(&keys, &hs256("s", &claims(json!({ "exp": 1000 })))).err(), Some(TokenError::Expired));
        // No leeway: the second of `exp` is already past the token's life.
        let now = hs256("s", &claims(json!({ "exp": now_secs() })));
        assert_eq!(verify(&keys, &now).err(), Some(TokenError::Expired));
        let missing = hs256("s", &json!({ "sub": "u", "workspaces": [] }));
        assert_eq!(verify(&keys, &missing).err(), Some(TokenError::Malformed));
    }

    #[test]
    fn malformed_and_none_algorithm_tokens_are_refused() {
        let keys = Keys::from_secret("s");
        assert_eq!(verify(&keys, "abc").err(), Some(TokenError::Malformed));
        assert_eq!(verify(&keys, "a.b.c.d.e").err(), Some(TokenError::Malformed));
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(json!({}))).unwrap_or_default())
        );
        assert_eq!(verify(&keys, &none).err(), Some(TokenError::Algorithm));
        assert_eq!(verify(&pem_keys("test-only-rsa-public.pem"), &none).err(), Some(TokenError::Algorithm));
        // The secret verifies HS256 only, not another HMAC size.
        let hs512 = encode(&Header::new(Algorithm::HS512), &claims(json!({})), &EncodingKey::from_secret(b"s"));
        assert_eq!(verify(&keys, &hs512).err(), Some(TokenError::Algorithm));
    }

    #[test]
    fn a_token_before_its_nbf_is_refused() {
        let keys = Keys::from_secret("s");
        let future = hs256("s", &claims(json!({ "nbf": now_secs() + 120 })));
        assert_eq!(verify(&keys, &future).err(), Some(TokenError::NotYetValid));
        let past = hs256("s", &claims(json!({ "nbf": now_secs() - 5 })));
        assert_eq!(subject(verify(&keys, &past)), Ok("u".into()));
        let now = hs256("s", &claims(json!({ "nbf": now_secs() })));
        assert_eq!(subject(verify(&keys, &now)), Ok("u".into()));
        // A claim of the wrong type is not skipped (CVE-2026-25537).
        let text = hs256("s", &claims(json!({ "nbf": (now_secs() + 120).to_string() })));
        assert_eq!(verify(&keys, &text).err(), Some(TokenError::Malformed));
        let rs = rs256(None, &claims(json!({ "nbf": now_secs() + 120 })));
        assert_eq!(verify(&pem_keys("test-only-rsa-public.pem"), &rs).err(), Some(TokenError::NotYetValid));
    }

    #[test]
    fn any_crit_header_is_refused() {
        let keys = Keys::from_secret("s");
        let claims = claims(json!({}));
        for header in [
            json!({ "alg": "HS256", "crit": ["exp"], "exp": 1 }),
            json!({ "alg": "HS256", "crit": ["b64"], "b64": false }),
            json!({ "alg": "HS256", "crit": [] }),
        ] {
            assert_eq!(verify(&keys, &raw_hs256(&header, &claims, b"s")).err(), Some(TokenError::Critical), "{header}");
        }
        let mut header = with_kid(Algorithm::ES256, Some("test-ec-1"));
        header.crit = Some(vec!["urn:example:ext".into()]);
        let token = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).map(|key| encode(&header, &claims, &key));
        assert_eq!(verify(&jwks_keys(), &token.unwrap_or_default()).err(), Some(TokenError::Critical));
        // The same header without `crit` is fine.
        assert!(verify(&keys, &raw_hs256(&json!({ "alg": "HS256", "typ": "JWT" }), &claims, b"s")).is_ok());
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused() {
        let claims = claims(json!({}));
        let forged = raw_hs256(&json!({ "alg": "HS256", "typ": "JWT" }), &claims, RSA_PUBLIC.as_bytes());
        // Public keys only: no key verifies HS256 at all.
        assert_eq!(verify(&pem_keys("test-only-rsa-public.pem"), &forged).err(), Some(TokenError::Algorithm));
        assert_eq!(verify(&jwks_keys(), &forged).err(), Some(TokenError::Algorithm));
        // With a secret too: HS256 is checked against the secret alone.
        let both = load(
            Some("s"),
            KeySettings { public_key_file: Some(key_file("test-only-rsa-public.pem")), ..KeySettings::default() },
        );
        assert_eq!(verify(&both, &forged).err(), Some(TokenError::Signature));
        // The other way round: an RS256 token is not checked with the secret.
        let rs = rs256(None, &claims);
        assert_eq!(verify(&Keys::from_secret("s"), &rs).err(), Some(TokenError::Algorithm));
        assert_eq!(subject(verify(&both, &rs)), Ok("u".into()));
        // An ES256 key does not verify an RS256 token, nor the reverse.
        assert_eq!(verify(&pem_keys("test-only-ec-p256-public.pem"), &rs).err(), Some(TokenError::Algorithm));
        let es = es256(None, &claims);
        assert_eq!(verify(&pem_keys("test-only-rsa-public.pem"), &es).err(), Some(TokenError::Algorithm));
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_a_pem_file() {
        let rsa = pem_keys("test-only-rsa-public.pem");
        let ec = pem_keys("test-only-ec-p256-public.pem");
        assert_eq!(subject(verify(&rsa, &rs256(None, &claims(json!({}))))), Ok("u".into()));
        // A PEM key has no kid: any kid the token names is accepted.
        assert_eq!(subject(verify(&rsa, &rs256(Some("any"), &claims(json!({}))))), Ok("u".into()));
        assert_eq!(subject(verify(&ec, &es256(None, &claims(json!({}))))), Ok("u".into()));
        // Signed by another RSA key: refused.
        let other = EncodingKey::from_rsa_pem(RSA_OTHER_PRIVATE.as_bytes())
            .map(|key| encode(&Header::new(Algorithm::RS256), &claims(json!({})), &key));
        assert_eq!(verify(&rsa, &other.unwrap_or_default()).err(), Some(TokenError::Signature));
        // Without a secret there is no random one either, and nothing to mint with.
        assert!(!rsa.has_random_secret());
        assert!(rsa.signer().is_none());
        assert_eq!(verify(&rsa, &hs256("anything", &claims(json!({})))).err(), Some(TokenError::Algorithm));
    }

    #[test]
    fn the_algorithm_setting_must_fit_the_key() {
        let with = |file: &str, algorithm: &str| {
            Keys::load(
                None,
                &KeySettings {
                    public_key_file: Some(key_file(file)),
                    algorithm: Some(algorithm.into()),
                    ..KeySettings::default()
                },
            )
        };
        let ps256 = with("test-only-rsa-public.pem", "ps256");
        assert!(ps256.is_ok());
        let rs = rs256(None, &claims(json!({})));
        assert_eq!(ps256.map(|keys| verify(&keys, &rs).err()).ok().flatten(), Some(TokenError::Algorithm));
        assert!(with("test-only-rsa-public.pem", "ES256").is_err());
        assert!(with("test-only-rsa-public.pem", "HS256").is_err());
        assert!(with("test-only-ec-p256-public.pem", "ES384").is_err());
        assert!(with("test-only-ec-p256-public.pem", "ES256").is_ok());
        // A setting without a key file is a mistake, not ignored.
        let alone = KeySettings { algorithm: Some("RS256".into()), ..KeySettings::default() };
        assert!(Keys::load(Some("s"), &alone).is_err());
    }

    #[test]
    fn only_a_public_key_is_taken_from_the_pem_file() {
        for file in ["test-only-rsa-private.pem", "test-only-ec-p256-private.pem", "test-only-jwks.json", "missing.pem"]
        {
            let settings = KeySettings { public_key_file: Some(key_file(file)), ..KeySettings::default() };
            assert!(Keys::load(None, &settings).is_err(), "{file}");
        }
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_a_jwks_by_kid() {
        let keys = jwks_keys();
        assert_eq!(subject(verify(&keys, &rs256(Some("test-rsa-1"), &claims(json!({}))))), Ok("u".into()));
        assert_eq!(subject(verify(&keys, &es256(Some("test-ec-1"), &claims(json!({}))))), Ok("u".into()));
        // Without a kid, every key of the token's algorithm is tried.
        assert_eq!(subject(verify(&keys, &es256(None, &claims(json!({}))))), Ok("u".into()));
    }

    #[test]
    fn a_wrong_kid_is_refused() {
        let keys = jwks_keys();
        let unknown = rs256(Some("test-rsa-2"), &claims(json!({})));
        assert_eq!(verify(&keys, &unknown).err(), Some(TokenError::UnknownKey));
        // The kid of a key of another algorithm is no match either.
        let crossed = rs256(Some("test-ec-1"), &claims(json!({})));
        assert_eq!(verify(&keys, &crossed).err(), Some(TokenError::UnknownKey));
        // A known kid with another key's signature.
        let other = EncodingKey::from_rsa_pem(RSA_OTHER_PRIVATE.as_bytes())
            .map(|key| encode(&with_kid(Algorithm::RS256, Some("test-rsa-1")), &claims(json!({})), &key));
        assert_eq!(verify(&keys, &other.unwrap_or_default()).err(), Some(TokenError::Signature));
    }

    #[test]
    fn unusable_jwks_keys_are_skipped_and_an_empty_set_is_refused() {
        let dir = std::env::temp_dir().join(format!("jobstream-jwks-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let ec_key = json!({ "kty": "EC", "crv": "P-256", "kid": "ec",
            "x": "k5ooXtEN2lh6ds9GjqqjDGTYJ-DWvb7F4ocwEavVEsE", "y": "VAAka64MF75KvIlu1rS8_CgvqnGfNSEfS_aHdtMBSho" });
        let mut enc = ec_key.clone();
        enc["use"] = json!("enc");
        let mut mismatched = ec_key.clone();
        mismatched["alg"] = json!("HS256");
        let mut rsa_alg = ec_key.clone();
        rsa_alg["alg"] = json!("RS256");
        let oct = json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "oct" });
        let odd = json!({ "kty": "XYZ", "kid": "odd" });
        let write = |name: &str, keys: Vec<Value>| {
            let path = dir.join(name);
            let _ = std::fs::write(&path, json!({ "keys": keys }).to_string());
            path
        };
        let usable = write("usable.json", vec![enc.clone(), oct.clone(), odd.clone(), mismatched.clone(), ec_key]);
        let keys = Keys::load(None, &KeySettings { jwks_file: Some(usable), ..KeySettings::default() });
        assert_eq!(keys.map(|k| k.0.public.len()).ok(), Some(1));
        let empty = write("empty.json", vec![enc, oct, odd, mismatched, rsa_alg]);
        assert!(Keys::load(None, &KeySettings { jwks_file: Some(empty), ..KeySettings::default() }).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let keys = load(
            Some("s"),
            KeySettings {
                jwks_file: Some(key_file("test-only-jwks.json")),
                issuer: Some("https://idp.example".into()),
                audience: vec!["jobstream".into(), " other ".into()],
                ..KeySettings::default()
            },
        );
        let good = json!({ "iss": "https://idp.example", "aud": "jobstream" });
        assert_eq!(subject(verify(&keys, &rs256(Some("test-rsa-1"), &claims(good)))), Ok("u".into()));
        let listed = json!({ "iss": "https://idp.example", "aud": ["else", "other"] });
        assert_eq!(subject(verify(&keys, &es256(Some("test-ec-1"), &claims(listed)))), Ok("u".into()));
        for (extra, refusal) in [
            (json!({ "iss": "https://evil.example", "aud": "jobstream" }), TokenError::Issuer),
            (json!({ "aud": "jobstream" }), TokenError::Issuer),
            (json!({ "iss": "https://idp.example", "aud": "elsewhere" }), TokenError::Audience),
            (json!({ "iss": "https://idp.example", "aud": ["a", "b"] }), TokenError::Audience),
            (json!({ "iss": "https://idp.example" }), TokenError::Audience),
            (json!({ "iss": "https://idp.example", "aud": 7 }), TokenError::Audience),
        ] {
            let token = rs256(Some("test-rsa-1"), &claims(extra.clone()));
            assert_eq!(verify(&keys, &token).err(), Some(refusal.clone()), "{extra}");
            // HS256 tokens pass the same checks.
            assert_eq!(verify(&keys, &hs256("s", &claims(extra.clone()))).err(), Some(refusal), "{extra}");
        }
        // What the server mints carries them.
        let minted = keys.signer().map(|s| s.mint("svc", &[], &scopes("subscribe"), Duration::from_secs(60)));
        let minted = minted.and_then(Result::ok).unwrap_or_default();
        assert_eq!(subject(verify(&keys, &minted)), Ok("svc".into()));
        assert!(verify(&Keys::from_secret("s"), &minted).is_ok(), "unconfigured: iss and aud are not looked at");
    }

    #[test]
    fn the_previous_secret_verifies_during_a_rotation() {
        let keys = load(Some("new"), KeySettings { previous_secret: Some("old".into()), ..KeySettings::default() });
        assert_eq!(subject(verify(&keys, &hs256("old", &claims(json!({}))))), Ok("u".into()));
        assert_eq!(subject(verify(&keys, &hs256("new", &claims(json!({}))))), Ok("u".into()));
        assert_eq!(verify(&keys, &hs256("unknown", &claims(json!({})))).err(), Some(TokenError::Signature));
        // The previous secret's refusals are its own, not a signature error.
        let expired = hs256("old", &claims(json!({ "exp": 1000 })));
        assert_eq!(verify(&keys, &expired).err(), Some(TokenError::Expired));
        // New tokens are signed with the current secret.
        let minted = keys.signer().map(|s| s.mint("svc", &[], &scopes("subscribe"), Duration::from_secs(60)));
        let minted = minted.and_then(Result::ok).unwrap_or_default();
        assert!(verify(&Keys::from_secret("new"), &minted).is_ok());
        assert_eq!(verify(&Keys::from_secret("old"), &minted).err(), Some(TokenError::Signature));
        // A previous secret without a current one is refused at start.
        let previous_only = KeySettings { previous_secret: Some("old".into()), ..KeySettings::default() };
        assert!(Keys::load(None, &previous_only).is_err());
    }

    #[test]
    fn without_any_key_a_random_secret_is_made() {
        let keys = load(None, KeySettings::default());
        assert!(keys.has_random_secret());
        let minted = keys.signer().map(|s| s.mint("demo", &[], &scopes("subscribe"), Duration::from_secs(60)));
        let minted = minted.and_then(Result::ok).unwrap_or_default();
        assert!(verify(&keys, &minted).is_ok());
    }

    #[test]
    fn debug_output_has_no_secret() {
        let settings = KeySettings {
            previous_secret: Some("previous-secret-value".into()),
            jwks_file: Some(key_file("test-only-jwks.json")),
            ..KeySettings::default()
        };
        let keys = load(Some("current-secret-value"), settings.clone());
        let text = format!("{keys:?} {settings:?} {:?}", keys.signer());
        for secret in ["previous-secret-value", "current-secret-value"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("test-rsa-1") && text.contains("ES256"), "{text}");
    }

    #[test]
    fn the_expiry_is_kept_and_passes_at_exp() {
        let keys = Keys::from_secret("s");
        let token = mint(&Secret::new("s"), "svc", &[], &scopes("subscribe"), Duration::from_secs(60));
        let verified = token.ok().and_then(|token| verify_token(&keys, &token).ok());
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
}
