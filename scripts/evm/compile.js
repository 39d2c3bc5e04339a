#!/usr/bin/env node
// Compiles Cohort's contracts (ledger-evm/contracts/CohortLedgerAnchor.sol,
// CohortRewards.sol and CohortUpdateVerifier.sol) with the pinned solc-js and writes the ABI and
// bytecode the Rust crate embeds (ledger-evm/contracts/NAME.json), so that
// building Cohort never needs node.
//
//   node compile.js          regenerate the artifacts
//   node compile.js --check  fail if a committed artifact differs from a fresh compile
"use strict";

const fs = require("fs");
const path = require("path");
const crypto = require("crypto");
const solc = require("solc");

const dir = path.join(__dirname, "..", "..", "ledger-evm", "contracts");

function compile(NAME) {
  const sourcePath = path.join(dir, `${NAME}.sol`);
  const artifactPath = path.join(dir, `${NAME}.json`);

  // `paris`: no PUSH0 or MCOPY, so the same bytecode deploys on chains that
  // lag behind mainnet's hard forks.
  const settings = {
    optimizer: { enabled: true, runs: 200 },
    evmVersion: "paris",
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  };

  const source = fs.readFileSync(sourcePath, "utf8");
  const input = {
    language: "Solidity",
    sources: { [`${NAME}.sol`]: { content: source } },
    settings,
  };
  const output = JSON.parse(solc.compile(JSON.stringify(input)));
  const errors = (output.errors || []).filter((e) => e.severity === "error");
  for (const e of output.errors || []) {
    process.stderr.write(e.formattedMessage + "\n");
  }
  if (errors.length > 0) {
    process.exit(1);
  }
  const contract = output.contracts[`${NAME}.sol`][NAME];
  const artifact = {
    contractName: NAME,
    source: `ledger-evm/contracts/${NAME}.sol`,
    sourceSha256: crypto.createHash("sha256").update(source).digest("hex"),
    compiler: `solc-js ${solc.version()}`,
    optimizer: settings.optimizer,
    evmVersion: settings.evmVersion,
    abi: contract.abi,
    bytecode: "0x" + contract.evm.bytecode.object,
    deployedBytecode: "0x" + contract.evm.deployedBytecode.object,
  };
  const text = JSON.stringify(artifact, null, 2) + "\n";

  if (process.argv.includes("--check")) {
    const committed = fs.existsSync(artifactPath) ? fs.readFileSync(artifactPath, "utf8") : "";
    if (committed !== text) {
      process.stderr.write(
        `${path.relative(process.cwd(), artifactPath)} does not match a fresh compile of ${NAME}.sol ` +
          `(${artifact.compiler}); run \`node scripts/evm/compile.js\` and commit the result\n`,
      );
      process.exit(1);
    }
    process.stdout.write(`${NAME}.json matches a fresh compile (${artifact.compiler})\n`);
  } else {
    fs.writeFileSync(artifactPath, text);
    process.stdout.write(
      `wrote ${path.relative(process.cwd(), artifactPath)}: ${(artifact.bytecode.length - 2) / 2} bytes of init code, ` +
        `${(artifact.deployedBytecode.length - 2) / 2} deployed (${artifact.compiler})\n`,
    );
  }
}

for (const name of ["CohortLedgerAnchor", "CohortRewards", "CohortUpdateVerifier"]) {
  compile(name);
}
