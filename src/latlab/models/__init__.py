"""latlab.models: what every method above needs of a causal LM: loading and building it (`loading`, `adapters`),
turning text into its inputs (`encoding`), reading its outputs (`generation`, `scoring`), reaching into its residual
stream (`hooks`) and counting the work done through it (`compute`)."""
