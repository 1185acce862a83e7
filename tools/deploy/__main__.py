"""python -m tools.deploy [PATH ...]: validate kustomizations and cluster YAMLs (default: every kustomization in k8s/)."""
from tools.deploy.validate import main

raise SystemExit(main())
