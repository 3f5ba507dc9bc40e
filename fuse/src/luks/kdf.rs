//! Key derivation of key slots: PBKDF2 (LUKS1, and LUKS2's `pbkdf2`) and Argon2i/Argon2id
//! (LUKS2's default), with the costs bounded by [`KdfLimits`] before any work or allocation:
//! the parameters come from the (untrusted) header, and Argon2's memory cost is an
//! allocation of that many KiB.

use zeroize::Zeroizing;

use super::error::LuksError;
use super::hash::Hash;

/// How a key slot's key is derived from the passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The HMAC's hash.
        hash: Hash,
        /// Iteration count.
        iterations: u32,
        /// Salt.
        salt: Vec<u8>,
    },
    /// Argon2 (RFC 9106), version 0x13.
    Argon2 {
        /// `argon2i` or `argon2id`.
        variant: Argon2Variant,
        /// Time cost (passes).
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Parallelism (lanes).
        lanes: u32,
        /// Salt.
        salt: Vec<u8>,
    },
}

/// Which Argon2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Argon2Variant {
    /// `argon2i`.
    I,
    /// `argon2id`.
    Id,
}

/// The most a key derivation may cost; dearer key slots are refused
/// ([`LuksError::TooCostly`]) before anything is computed or allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    /// The most PBKDF2 iterations (of a key slot, or of the volume key's digest).
    pub max_pbkdf2_iterations: u32,
    /// The most Argon2 memory, in KiB.
    pub max_argon2_memory_kib: u32,
    /// The most Argon2 passes.
    pub max_argon2_time: u32,
    /// The most Argon2 lanes.
    pub max_argon2_lanes: u32,
}

impl KdfLimits {
    /// What real volumes need: cryptsetup's own ceilings (Argon2 memory at most 4 GiB, at
    /// most 32 lanes), and PBKDF2 iterations up to 2^28 (cryptsetup calibrates to about two
    /// seconds, a few million iterations; 2^28 is minutes of work: beyond that it is damage).
    pub const DEFAULT: KdfLimits = KdfLimits {
        max_pbkdf2_iterations: 1 << 28,
        max_argon2_memory_kib: 4 << 20,
        max_argon2_time: 1 << 16,
        max_argon2_lanes: 32,
    };

    /// For fuzzing: cryptsetup's minimums (`--pbkdf-force-iterations 1000` for PBKDF2, 4
    /// passes over 32 KiB for Argon2, one lane) and a little more, so that seeds made with
    /// those costs unlock and nothing else takes long.
    pub const FUZZ: KdfLimits = KdfLimits {
        max_pbkdf2_iterations: 2000,
        max_argon2_memory_kib: 64,
        max_argon2_time: 8,
        max_argon2_lanes: 2,
    };

    /// Refuses `iterations` of PBKDF2 above the limit; `what` names whose they are.
    pub fn check_pbkdf2(&self, iterations: u32, what: &str) -> Result<(), LuksError> {
        if iterations > self.max_pbkdf2_iterations {
            return Err(LuksError::TooCostly(format!(
                "{what} asks for {iterations} PBKDF2 iterations, more than the {} allowed",
                self.max_pbkdf2_iterations
            )));
        }
        Ok(())
    }
}

impl Default for KdfLimits {
    fn default() -> Self {
        KdfLimits::DEFAULT
    }
}

impl Kdf {
    /// Refuses this derivation if it costs more than `limits` allow; `what` names it.
    pub fn check(&self, limits: &KdfLimits, what: &str) -> Result<(), LuksError> {
        match self {
            Kdf::Pbkdf2 { iterations, .. } => limits.check_pbkdf2(*iterations, what),
            Kdf::Argon2 {
                time,
                memory_kib,
                lanes,
                ..
            } => {
                if *memory_kib > limits.max_argon2_memory_kib {
                    return Err(LuksError::TooCostly(format!(
                        "{what} asks for {memory_kib} KiB of Argon2 memory, more than the {} \
                         KiB allowed",
                        limits.max_argon2_memory_kib
                    )));
                }
                if *time > limits.max_argon2_time || *lanes > limits.max_argon2_lanes {
                    return Err(LuksError::TooCostly(format!(
                        "{what} asks for {time} Argon2 passes over {lanes} lanes, more than \
                         the {} passes and {} lanes allowed",
                        limits.max_argon2_time, limits.max_argon2_lanes
                    )));
                }
                Ok(())
            }
        }
    }

    /// `len` bytes of key from `passphrase`, if the costs are within `limits`.
    pub fn derive(
        &self,
        passphrase: &[u8],
        len: usize,
        limits: &KdfLimits,
        what: &str,
    ) -> Result<Zeroizing<Vec<u8>>, LuksError> {
        self.check(limits, what)?;
        let mut key = Zeroizing::new(vec![0u8; len]);
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => {
                if *iterations == 0 {
                    return Err(LuksError::corrupt(format!(
                        "{what}: zero PBKDF2 iterations"
                    )));
                }
                hash.pbkdf2(passphrase, salt, *iterations, &mut key);
            }
            Kdf::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
                salt,
            } => {
                let algorithm = match variant {
                    Argon2Variant::I => argon2::Algorithm::Argon2i,
                    Argon2Variant::Id => argon2::Algorithm::Argon2id,
                };
                let params = argon2::Params::new(*memory_kib, *time, *lanes, Some(len))
                    .map_err(|e| LuksError::corrupt(format!("{what}: Argon2 parameters: {e}")))?;
                argon2::Argon2::new(algorithm, argon2::Version::V0x13, params)
                    .hash_password_into(passphrase, salt, &mut key)
                    .map_err(|e| LuksError::corrupt(format!("{what}: Argon2: {e}")))?;
            }
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_over_the_limits_are_refused() {
        let huge = Kdf::Argon2 {
            variant: Argon2Variant::Id,
            time: 4,
            memory_kib: u32::MAX,
            lanes: 1,
            salt: vec![0; 32],
        };
        let e = huge
            .derive(b"pw", 64, &KdfLimits::DEFAULT, "key slot 0")
            .expect_err("refused");
        assert!(
            matches!(&e, LuksError::TooCostly(m) if m.contains("key slot 0") && m.contains("4294967295 KiB")),
            "{e}"
        );
        let slow = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 5000,
            salt: vec![1; 32],
        };
        assert!(matches!(
            slow.derive(b"pw", 32, &KdfLimits::FUZZ, "key slot 1"),
            Err(LuksError::TooCostly(_))
        ));
        assert_eq!(
            slow.derive(b"pw", 32, &KdfLimits::DEFAULT, "key slot 1")
                .map(|k| k.len())
                .ok(),
            Some(32)
        );
    }

    #[test]
    fn argon2_parameters_out_of_range_are_damage() {
        let bad = Kdf::Argon2 {
            variant: Argon2Variant::I,
            time: 0,
            memory_kib: 8,
            lanes: 1,
            salt: vec![0; 16],
        };
        assert!(matches!(
            bad.derive(b"pw", 32, &KdfLimits::DEFAULT, "key slot 0"),
            Err(LuksError::Corrupt(_))
        ));
    }
}
