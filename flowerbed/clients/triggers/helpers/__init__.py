"""What triggers are built from: the DCT, colour conversion, coefficient edits, list parsing,
and the stealth metrics (PSNR, SSIM) a trigger is judged by. No trigger is registered here."""
