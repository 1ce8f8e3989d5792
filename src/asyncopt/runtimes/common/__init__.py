"""What every runtime shares: minibatch generators, shared-memory buffers, the block layout, the
capability checks of the modes without a central server. No runtime imports another; they all
import from here."""
