"""What every strategy is built from: the shared base class and its Params, the update
arithmetic, detection reports, clustering. No strategy is registered here."""
