// A block floating-point dot-product tile: the device's matrix-vector work, one engine of LANES multipliers.
//
// Each cycle it takes one block of a matrix row and the matching block of the vector (signs, MBITS-bit integer
// magnitudes, one shared exponent each); three register stages (the sum, the float32 term, the accumulator) later,
// that block's product is in the row's float32 accumulator, and with `in_last` the row's result is on `out_value`
// with `out_valid`. Rows stream back to back, one block a cycle: an R x C matrix takes R * ceil(C / LANES) cycles,
// and its last result two more.
// The numbers are accel_lib.fpga.device.dot's, bit for bit:
//   1. S = sum of the signed products of the magnitudes: an exact integer;
//   2. t = S * 2^(Ew + Ex - 2*MBITS + 2) as float32 (exact: |S| < 2^24), below 2^-126 flushed to +0;
//   3. acc = acc + t, float32, rounded to nearest, ties to even, below 2^-126 flushed to +0.
// Plain synthesizable Verilog-2005: no vendor primitives.
`timescale 1ns / 1ps
module bfp_dot_tile #(
    parameter LANES = 16,          // values per block: the native vector
    parameter MBITS = 7,           // magnitude bits of an element
    parameter EBITS = 8            // bits of a shared exponent (it is given sign-extended to EBITS + 1 bits)
) (
    input  wire                     clk,
    input  wire                     rst,
    input  wire                     in_valid,
    input  wire                     in_last,        // the row's last block
    input  wire [LANES-1:0]         w_sign,
    input  wire [LANES*MBITS-1:0]   w_mag,
    input  wire signed [EBITS:0]    w_exp,
    input  wire [LANES-1:0]         x_sign,
    input  wire [LANES*MBITS-1:0]   x_mag,
    input  wire signed [EBITS:0]    x_exp,
    output reg                      out_valid,
    output reg  [31:0]              out_value       // float32 bits
);
    localparam SW = 2 * MBITS + $clog2(LANES) + 2;   // the signed block sum's width, with room to spare
    localparam XW = EBITS + 3;                        // the scaled exponent's width

    // -- stage 1: the block's exact integer sum and its exponent --------------------------------------------
    reg signed [SW-1:0] sum;
    reg signed [XW-1:0] shift;
    integer i;
    always @(*) begin : block_sum
        reg [2*MBITS-1:0] p;
        sum = 0;
        for (i = 0; i < LANES; i = i + 1) begin
            p = w_mag[i*MBITS +: MBITS] * x_mag[i*MBITS +: MBITS];
            if (w_sign[i] ^ x_sign[i]) sum = sum - $signed({2'b00, p});
            else                       sum = sum + $signed({2'b00, p});
        end
        shift = w_exp + x_exp - 2 * MBITS + 2;
    end
    reg signed [SW-1:0] s1_sum;
    reg signed [XW-1:0] s1_shift;
    reg                 s1_valid, s1_last;
    always @(posedge clk) begin
        s1_valid <= rst ? 1'b0 : in_valid;
        s1_last  <= in_last;
        s1_sum   <= sum;
        s1_shift <= shift;
    end

    // -- stage 2: the sum as a float32 term (exact), flushed below the normal range, infinite above it ---------
    reg [31:0] term;
    always @(*) begin : to_float
        reg [SW-1:0] mag;
        reg [SW+23:0] norm;
        reg signed [XW+1:0] e;
        integer lead, k;
        mag = s1_sum[SW-1] ? -s1_sum : s1_sum;
        lead = 0;
        for (k = 0; k < SW; k = k + 1)
            if (mag[k]) lead = k;
        e = s1_shift + lead + 127;
        norm = {{24{1'b0}}, mag} << (23 - lead);     // the leading one at bit 23: exact, |sum| < 2^24
        if (mag == 0 || e <= 0) term = 32'h0000_0000;
        else if (e >= 255)      term = {s1_sum[SW-1], 8'hff, 23'd0};
        else                    term = {s1_sum[SW-1], e[7:0], norm[22:0]};
    end
    reg [31:0] s2_term;
    reg        s2_valid, s2_last;
    always @(posedge clk) begin
        s2_valid <= rst ? 1'b0 : s1_valid;
        s2_last  <= s1_last;
        s2_term  <= term;
    end

    // -- stage 3: the row's float32 accumulator -----------------------------------------------------------
    reg  [31:0] acc;
    reg         first;                // the next block starts a row
    wire [31:0] total;
    fp32_add adder (.a(first ? 32'h0000_0000 : acc), .b(s2_term), .y(total));
    always @(posedge clk) begin
        if (rst) begin
            first     <= 1'b1;
            out_valid <= 1'b0;
        end else begin
            out_valid <= s2_valid && s2_last;
            if (s2_valid) begin
                acc   <= total;
                first <= s2_last;
                if (s2_last) out_value <= total;
            end
        end
    end
endmodule

// float32 a + b, rounded to nearest, ties to even; a result below 2^-126 is flushed to +0 (the inputs are never
// subnormal); an infinity or a NaN in, as IEEE 754 says (a NaN out is the quiet 0x7fc00000).
module fp32_add (
    input  wire [31:0] a,
    input  wire [31:0] b,
    output reg  [31:0] y
);
    always @(*) begin : add
        reg        sa, sb, sy;
        reg [7:0]  ea, eb;
        reg [23:0] ma, mb;
        reg [26:0] xa, xb;            // 24 bits and guard, round, sticky
        reg [27:0] r;
        reg [8:0]  d;
        reg signed [10:0] ey;
        integer k, lead;
        reg sticky, up;
        reg [24:0] rounded;
        sa = a[31]; sb = b[31];
        ea = a[30:23]; eb = b[30:23];
        ma = 24'd0; mb = 24'd0; xa = 27'd0; xb = 27'd0; r = 28'd0; d = 9'd0;      // no latches: every path assigns
        ey = 11'sd0; sy = 1'b0; sticky = 1'b0; up = 1'b0; rounded = 25'd0; lead = 0;
        if ((ea == 8'hff && a[22:0] != 0) || (eb == 8'hff && b[22:0] != 0)) y = 32'h7fc0_0000;
        else if (ea == 8'hff && eb == 8'hff) y = (sa == sb) ? a : 32'h7fc0_0000;
        else if (ea == 8'hff) y = a;
        else if (eb == 8'hff) y = b;
        else if (ea == 0) y = (eb == 0) ? 32'h0000_0000 : b;
        else if (eb == 0) y = a;
        else begin
            ma = {1'b1, a[22:0]};
            mb = {1'b1, b[22:0]};
            if ({eb, mb} > {ea, ma}) begin    // |a| >= |b| from here on
                {sa, sb} = {sb, sa};
                {ea, eb} = {eb, ea};
                {ma, mb} = {mb, ma};
            end
            d = ea - eb;
            xa = {ma, 3'b000};
            xb = {mb, 3'b000};
            sticky = 1'b0;
            for (k = 0; k < 27; k = k + 1)
                if (k < d && xb[k]) sticky = 1'b1;
            xb = (d >= 27) ? 27'd0 : (xb >> d);
            xb[0] = xb[0] | sticky;
            ey = ea;
            sy = sa;
            if (sa == sb) r = xa + xb;
            else          r = xa - xb;
            if (r == 0) y = 32'h0000_0000;
            else begin
                if (r[27]) begin              // a carry out: one place right, the sticky kept
                    r = {1'b0, r[27:2], r[1] | r[0]};
                    ey = ey + 1;
                end else begin                // cancellation: left until the leading one is at bit 26
                    lead = 0;
                    for (k = 0; k < 27; k = k + 1)
                        if (r[k]) lead = k;
                    r = r << (26 - lead);
                    ey = ey - (26 - lead);
                end
                up = r[2] && (r[1] || r[0] || r[3]);
                rounded = {1'b0, r[26:3]} + up;
                if (rounded[24]) begin
                    rounded = rounded >> 1;
                    ey = ey + 1;
                end
                if (ey >= 255)    y = {sy, 8'hff, 23'd0};
                else if (ey <= 0) y = 32'h0000_0000;
                else              y = {sy, ey[7:0], rounded[22:0]};
            end
        end
    end
endmodule
