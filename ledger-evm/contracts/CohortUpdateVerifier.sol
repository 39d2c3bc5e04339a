// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.28;

/// @title Cohort update-proof verifier
/// @notice Checks, on chain, the Groth16 proofs (BN254) that Cohort's
/// hospitals attach to their updates (`[proofs] update = "norm"`: every
/// entry of the quantized update in range and its L2 norm within the job's
/// bound, bound to the update's Poseidon hash, the job, the round and the
/// hospital). One deployment per job: its verifying key, read from the
/// job's `proof_setup` ledger entry, is fixed at construction. Written
/// against the EIP-196/197 precompiles (0x06 add, 0x07 scalar
/// multiplication, 0x08 pairing check); it accepts a proof exactly when
/// e(-A, B) · e(alpha, beta) · e(vk_x, gamma) · e(C, delta) = 1 with
/// vk_x = IC_0 + sum_i input_i · IC_{i+1}.
contract CohortUpdateVerifier {
    /// What `interfaceId()` returns: keccak256("cohort.update-verifier.v1").
    bytes32 public constant INTERFACE_ID = keccak256("cohort.update-verifier.v1");

    /// BN254's base field modulus.
    uint256 private constant Q =
        21888242871839275222246405745257275088696311157297823662689037894645226208583;
    /// BN254's scalar field modulus: public inputs must be below it.
    uint256 private constant R =
        21888242871839275222246405745257275088548364400416034343698204186575808495617;

    // G1 points are (x, y); G2 points (x_imaginary, x_real, y_imaginary,
    // y_real), the precompile's order. Immutable: read from code, not storage.
    uint256 private immutable alphaX;
    uint256 private immutable alphaY;
    uint256 private immutable betaX1;
    uint256 private immutable betaX0;
    uint256 private immutable betaY1;
    uint256 private immutable betaY0;
    uint256 private immutable gammaX1;
    uint256 private immutable gammaX0;
    uint256 private immutable gammaY1;
    uint256 private immutable gammaY0;
    uint256 private immutable deltaX1;
    uint256 private immutable deltaX0;
    uint256 private immutable deltaY1;
    uint256 private immutable deltaY0;
    uint256[2][] private ic;

    error NoPublicInputs();
    error WrongInputCount(uint256 expected, uint256 given);

    constructor(
        uint256[2] memory alpha,
        uint256[4] memory beta,
        uint256[4] memory gamma,
        uint256[4] memory delta,
        uint256[2][] memory ic_
    ) {
        if (ic_.length < 2) revert NoPublicInputs();
        alphaX = alpha[0];
        alphaY = alpha[1];
        (betaX1, betaX0, betaY1, betaY0) = (beta[0], beta[1], beta[2], beta[3]);
        (gammaX1, gammaX0, gammaY1, gammaY0) = (gamma[0], gamma[1], gamma[2], gamma[3]);
        (deltaX1, deltaX0, deltaY1, deltaY0) = (delta[0], delta[1], delta[2], delta[3]);
        for (uint256 i = 0; i < ic_.length; i++) {
            ic.push(ic_[i]);
        }
    }

    function interfaceId() external pure returns (bytes32) {
        return INTERFACE_ID;
    }

    /// How many public inputs a proof has.
    function publicInputs() external view returns (uint256) {
        return ic.length - 1;
    }

    /// Whether `(a, b, c)` proves the statement for `input`. A malformed
    /// proof (a point off the curve, a coordinate out of range) or an input
    /// outside the scalar field is `false`, never a revert.
    function verifyProof(
        uint256[2] calldata a,
        uint256[4] calldata b,
        uint256[2] calldata c,
        uint256[] calldata input
    ) external view returns (bool) {
        if (input.length + 1 != ic.length) revert WrongInputCount(ic.length - 1, input.length);
        uint256[2] memory x = ic[0];
        for (uint256 i = 0; i < input.length; i++) {
            if (input[i] >= R) return false;
            (bool ok, uint256[2] memory term) = _mul(ic[i + 1], input[i]);
            if (!ok) return false;
            (ok, x) = _add(x, term);
            if (!ok) return false;
        }
        if (a[1] >= Q) return false;
        uint256[24] memory p;
        // e(-A, B)
        p[0] = a[0];
        p[1] = a[1] == 0 ? 0 : Q - a[1];
        (p[2], p[3], p[4], p[5]) = (b[0], b[1], b[2], b[3]);
        // e(alpha, beta)
        (p[6], p[7]) = (alphaX, alphaY);
        (p[8], p[9], p[10], p[11]) = (betaX1, betaX0, betaY1, betaY0);
        // e(vk_x, gamma)
        (p[12], p[13]) = (x[0], x[1]);
        (p[14], p[15], p[16], p[17]) = (gammaX1, gammaX0, gammaY1, gammaY0);
        // e(C, delta)
        (p[18], p[19]) = (c[0], c[1]);
        (p[20], p[21], p[22], p[23]) = (deltaX1, deltaX0, deltaY1, deltaY0);
        uint256[1] memory out;
        bool success;
        assembly {
            success := staticcall(gas(), 0x08, p, 768, out, 32)
        }
        return success && out[0] == 1;
    }

    function _add(uint256[2] memory p1, uint256[2] memory p2)
        private
        view
        returns (bool ok, uint256[2] memory r)
    {
        uint256[4] memory input = [p1[0], p1[1], p2[0], p2[1]];
        assembly {
            ok := staticcall(gas(), 0x06, input, 128, r, 64)
        }
    }

    function _mul(uint256[2] memory p1, uint256 s) private view returns (bool ok, uint256[2] memory r) {
        uint256[3] memory input = [p1[0], p1[1], s];
        assembly {
            ok := staticcall(gas(), 0x07, input, 96, r, 64)
        }
    }
}
