// The local node that tests/evm.rs and the deployment recipe start
// (`npx hardhat node`). Nothing here compiles: scripts/evm/compile.js does
// that with solc-js, and the Rust build uses the committed artifact.
module.exports = {
  networks: {
    hardhat: {
      chainId: 31337,
      // Mine every transaction as soon as it arrives.
      mining: { auto: true },
    },
  },
};
